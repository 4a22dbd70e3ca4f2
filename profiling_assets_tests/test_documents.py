"""Golden-structure user documents: exact rendering, neutralised user text, PII masking, lint."""

from __future__ import annotations

import io
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from profiling_assets.core import lint as lint_module
from profiling_assets.core.documents import (
    DocLine,
    SalesLayout,
    UserDocument,
    documents_frame,
    documents_from_frame,
    neutralise_user_text,
    render_cohort_documents,
    render_markdown,
    render_user_document,
)
from profiling_assets.core.lint import LintIssue, lint_document
from profiling_assets.core.pii import find_pii, mask_pii
from profiling_assets.core.spec import load_spec

USER: dict[str, Any] = {
    "user_id": "u1",
    "cohort": "2024-01",
    "gender": "女",
    "age": 28,
    "city": "北京",
    "signup_date": date(2023, 8, 1),
}
ORDERS: list[dict[str, Any]] = [
    # given out of order: the document sorts by date within each subsection
    {
        "order_id": "o2",
        "item": "祛眼袋",
        "category": "医美项目",
        "amount": 5200.0,
        "order_date": date(2024, 1, 3),
    },
    {
        "order_id": "o4",
        "item": "修护面膜",
        "category": "日用品",
        "amount": 129.9,
        "order_date": date(2024, 2, 2),
    },
    {
        "order_id": "o3",
        "item": "皮肤管理",
        "category": "皮肤项目",
        "amount": 398.0,
        "order_date": date(2024, 1, 28),
    },
    {
        "order_id": "o1",
        "item": "全切双眼皮",
        "category": "医美项目",
        "amount": 7800.0,
        "order_date": date(2023, 9, 12),
    },
    {
        "order_id": "o5",
        "item": "洁面乳",
        "category": None,
        "amount": 88.0,
        "order_date": date(2024, 3, 1),
    },
]
EVENTS: list[dict[str, Any]] = [
    {
        "event_id": "e2",
        "event_type": "浏览视频",
        "target": "《双眼皮修复案例解释》",
        "event_time": datetime(2024, 1, 6, 8, 30),
    },
    {
        "event_id": "e1",
        "event_type": "浏览文章",
        "target": "《开眼角需不需要全麻？》",
        "event_time": datetime(2024, 1, 5, 10, 0),
    },
]
MESSAGES: list[dict[str, Any]] = [
    {
        "message_id": "m2",
        "message": "双眼皮有没有自然一点的方案？",
        "sent_at": datetime(2024, 1, 7, 9, 0),
        "channel": None,
    },
    {
        "message_id": "m1",
        "message": "上次做眼袋恢复得有点慢",
        "sent_at": datetime(2024, 1, 6, 9, 0),
        "channel": "微信",
    },
]

GOLDEN = """\
## 基础信息
- 女，28 岁，常住北京，2023-08-01 注册

## 消费记录
### 医美项目消费
- 项目：全切双眼皮；金额：7800 元；日期：2023-09-12
- 项目：祛眼袋；金额：5200 元；日期：2024-01-03
### 皮肤项目消费
- 项目：皮肤管理；金额：398 元；日期：2024-01-28
### 其他消费
- 项目：修护面膜；金额：129.90 元；日期：2024-02-02
- 项目：洁面乳；金额：88 元；日期：2024-03-01

## 浏览行为
- 浏览文章：《开眼角需不需要全麻？》（2024-01-05）
- 浏览视频：《双眼皮修复案例解释》（2024-01-06）

## 用户发言
- 2024-01-06 在微信说：“上次做眼袋恢复得有点慢”
- 2024-01-07 说：“双眼皮有没有自然一点的方案？”
"""

CLINIC_LAYOUT = SalesLayout.from_spec(load_spec("clinic"))


def golden_document() -> UserDocument:
    return render_user_document(USER, ORDERS, EVENTS, MESSAGES, layout=CLINIC_LAYOUT)


def rules(markdown: str) -> set[str]:
    return {issue.rule for issue in lint_document(markdown)}


def test_golden_document_exact_markdown() -> None:
    document = golden_document()
    assert document.markdown == GOLDEN
    assert document.user_id == "u1"
    assert document.cohort == "2024-01"


def test_golden_document_passes_lint_with_zero_issues() -> None:
    assert lint_document(GOLDEN) == []
    assert lint_document(golden_document().markdown) == []


def test_golden_lines_carry_source_ids_and_places() -> None:
    lines = golden_document().lines
    assert [line.source_id for line in lines] == [
        "u1",
        "o1",
        "o2",
        "o3",
        "o4",
        "o5",
        "e1",
        "e2",
        "m1",
        "m2",
    ]
    assert [(line.section, line.subsection) for line in lines[:6]] == [
        ("基础信息", None),
        ("消费记录", "医美项目消费"),
        ("消费记录", "医美项目消费"),
        ("消费记录", "皮肤项目消费"),
        ("消费记录", "其他消费"),
        ("消费记录", "其他消费"),
    ]
    assert render_markdown(lines) == GOLDEN


def test_empty_sections_are_left_out() -> None:
    markdown = render_user_document(USER, [], [], [], layout=CLINIC_LAYOUT).markdown
    assert markdown == "## 基础信息\n- 女，28 岁，常住北京，2023-08-01 注册\n"
    assert lint_document(markdown) == []


def test_only_present_subsections_and_sections_appear() -> None:
    skin_only = [o for o in ORDERS if o["category"] == "皮肤项目"]
    markdown = render_user_document(
        USER, skin_only, [], MESSAGES[:1], layout=CLINIC_LAYOUT
    ).markdown
    assert "### 皮肤项目消费" in markdown
    assert "医美项目消费" not in markdown
    assert "其他消费" not in markdown
    assert "## 浏览行为" not in markdown
    assert "## 用户发言" in markdown
    assert lint_document(markdown) == []


def test_basic_line_without_optional_fields() -> None:
    user = {"user_id": "u9", "cohort": "c", "signup_date": None, "gender": None}
    markdown = render_user_document(user, [], [], [], layout=CLINIC_LAYOUT).markdown
    assert markdown == "## 基础信息\n- 日期不详 注册\n"
    assert lint_document(markdown) == []


def test_render_markdown_of_nothing_is_empty() -> None:
    assert render_markdown([]) == ""


def test_long_field_is_cut_but_message_is_not() -> None:
    orders = [{**ORDERS[0], "item": "超长项目名" * 200}]
    messages = [{**MESSAGES[1], "message": "很长的发言" * 200}]
    document = render_user_document(USER, orders, [], messages, layout=CLINIC_LAYOUT)
    item_line = document.lines[1].text
    item = item_line.removeprefix("项目：").split("；")[0]
    assert len(item) == 300
    assert item.endswith("…")
    assert "很长的发言" * 200 in document.lines[2].text


ADVERSARIAL = [
    "## 标题",
    "# 一级标题",
    "###### 六级",
    "| a | b |",
    "|---|---|",
    "- 列表",
    "* 星号列表",
    "+ 加号列表",
    "1. x",
    "2) y",
    "```python",
    "~~~",
    "`code`",
    "<script>alert(1)</script>",
    "> 引用",
    "第一行\n## 第二行\n- 第三行",
    "\n\n## 换行开头",
    "a\r\nb\u2028c\u2029d",
    "控制\x00字符\x1b[31m红色\x07\x7f\u200b\ufeff",
    "😀🎉 表情 emoji 🙂",
    "English and 中文 mixed, 日本語も, 한국어",
    "===",
    "---",
    "[链接](http://example.com)",
    "![图](x.png)",
    "**粗体** _斜体_",
    "gender: F",
    "url=http://example.com",
    "Name:张三",
    "http://example.com",
    "key : value",
    "   ",
    "“引号”里说“## 标题”",
]


def _everywhere(text: str) -> tuple[dict[str, Any], list[dict[str, Any]], ...]:
    user = {**USER, "gender": text, "city": text}
    orders = [{**ORDERS[0], "item": text, "category": text}]
    events = [{**EVENTS[0], "event_type": text, "target": text}]
    messages = [{**MESSAGES[1], "message": text, "channel": text}]
    return user, orders, events, messages


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_user_text_cannot_open_markdown_structure(text: str) -> None:
    markdown = render_user_document(*_everywhere(text), layout=CLINIC_LAYOUT).markdown
    assert lint_document(markdown) == [], markdown
    for line in markdown.splitlines():
        if not line:
            continue
        # every line is one of our headings or one top-level list item
        assert line.startswith(("## ", "### ", "- ")), line
        assert not line.startswith("- " + "- ")
        if line.startswith("#"):
            assert line in {
                "## 基础信息",
                "## 消费记录",
                "### 其他消费",
                "## 浏览行为",
                "## 用户发言",
            }
        else:
            assert "`" not in line
            assert "|" not in line
            assert "<" not in line
            assert not re.match(r"- (\d+[.)]|[-+*>#=]) ", line), line
    assert len(markdown.splitlines()) == 12  # 4 sections, 1 subsection, 4 items, 3 blanks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("## 标题", "＃＃ 标题"),
        ("| a | b |", "｜ a ｜ b ｜"),
        ("- 列表", "\\- 列表"),
        ("1. x", "\\1. x"),
        ("a\nb\tc", "a b c"),
        ("  多余   空格  ", "多余 空格"),
        ("说“你好”", "说「你好」"),
        ("😀 hi 你好", "😀 hi 你好"),
        ("ｅ\u0301", "ｅ\u0301"),
        ("e\u0301", "é"),  # NFC
    ],
)
def test_neutralise_user_text(text: str, expected: str) -> None:
    assert neutralise_user_text(text) == expected


def test_neutralise_limit_marks_the_cut() -> None:
    assert neutralise_user_text("一二三四五六", 4) == "一二三…"
    assert neutralise_user_text("一二三四", 4) == "一二三四"


PII = [
    ("13812345678", "[手机号]"),
    ("+86 13812345678", "[手机号]"),
    ("+8613812345678", "[手机号]"),
    ("+86-138-1234-5678", "[手机号]"),
    ("138-1234-5678", "[手机号]"),
    ("138 1234 5678", "[手机号]"),
    ("11010519900307123X", "[身份证号]"),
    ("11010519900307123x", "[身份证号]"),
    ("110105199003071234", "[身份证号]"),
    ("zhang.san@example.com", "[邮箱]"),
    ("zhang_san@example.com", "[邮箱]"),
    ("li-si+vip@mail.qq.com", "[邮箱]"),
    ("6222021234567890", "[银行卡号]"),
    ("6222021234567890123", "[银行卡号]"),
    ("6222 0212 3456 7890", "[银行卡号]"),
    ("6222-0212-3456-7890-123", "[银行卡号]"),
]


@pytest.mark.parametrize(("value", "tag"), PII)
def test_pii_is_masked_in_the_document(value: str, tag: str) -> None:
    said = f"我的信息是{value}，请联系"
    user, orders, events, messages = _everywhere(said)
    markdown = render_user_document(user, orders, events, messages, layout=CLINIC_LAYOUT).markdown
    assert tag in markdown
    assert find_pii(markdown) == []
    assert lint_document(markdown) == []
    digits = re.sub(r"\D", "", value)
    digits_left = re.sub(r"\D", "", markdown.replace("2024-01-", ""))
    assert not digits or digits[-8:] not in digits_left, markdown
    if "@" in value:
        local = value.split("@")[0]
        assert local[:4] not in markdown, markdown
    assert mask_pii(value) == tag
    assert find_pii(value) != []


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-06 预约了 3 次，花了 7800 元",
        "订单号 12345",
        "价格 1380 元，电话还没给",
        "身高 165，体重 50",
    ],
)
def test_ordinary_numbers_are_not_pii(text: str) -> None:
    assert find_pii(text) == []
    assert mask_pii(text) == text


def test_several_pii_in_one_message() -> None:
    text = "电话13912345678或+86 159-1234-5678，邮箱a_b@c.cn，身份证110105199003071234"
    masked = neutralise_user_text(text)
    assert masked == "电话[手机号]或[手机号]，邮箱[邮箱]，身份证[身份证号]"
    assert find_pii(masked) == []


# --- lint: one failing example per rule id --------------------------------------------------

LINT_FAILURES: dict[str, str] = {
    "no-table": "## 基础信息\n- 女\n| 年龄 | 城市 |\n",
    "no-code-or-html": "## 基础信息\n- 女\n```\n",
    "no-key-value": "## 基础信息\n- age: 28\n",
    "pii": "## 基础信息\n- 电话 13812345678\n",
    "heading-level": "## 基础信息\n- 女\n#### 细节\n- 更多\n",
    "heading-chinese": "## Basic info\n- 女\n",
    "heading-known": "## 基础信息\n- 女\n\n## 兴趣爱好\n- 读书\n",
    "section-order": "## 用户发言\n- 说话\n\n## 基础信息\n- 女\n",
    "list-only": "## 基础信息\n女，28 岁\n",
    "list-depth": "## 基础信息\n- 女\n    - 太深\n",
    "orphan-item": "- 没有标题的条目\n",
    "empty-section": "## 基础信息\n\n## 用户发言\n- 说话\n",
}


def lint_rule_ids() -> set[str]:
    source = Path(lint_module.__file__).read_text(encoding="utf-8")
    return set(re.findall(r'LintIssue\(\s*\w+,\s*"([a-z-]+)"', source))


def test_every_lint_rule_has_a_failing_example() -> None:
    assert lint_rule_ids() == set(LINT_FAILURES)


@pytest.mark.parametrize(("rule", "markdown"), LINT_FAILURES.items())
def test_lint_rule_fires(rule: str, markdown: str) -> None:
    issues = lint_document(markdown)
    assert rule in {issue.rule for issue in issues}, issues
    assert all(isinstance(issue, LintIssue) and issue.line >= 1 for issue in issues)
    assert issues == sorted(issues, key=lambda issue: issue.line)


@pytest.mark.parametrize(
    ("markdown", "rule", "line"),
    [
        ("## 基础信息\n- 女\n\n## 基础信息\n- 男\n", "section-order", 4),
        ("## 基础信息\n- 女\n### 医美项目消费\n- x\n", "heading-known", 3),
        ("## 消费记录\n### 医美项目消费\n\n## 用户发言\n- 说话\n", "empty-section", 2),
        ("## 消费记录\n### 医美项目消费\n\n## 用户发言\n- 说话\n", "empty-section", 1),
        ("## 基础信息\n- 女\n<div>\n", "no-code-or-html", 3),
        ("## 基础信息\n- 女\n~~~\n", "no-code-or-html", 3),
        ("## 基础信息\n- 女\n|---|---|\n", "no-table", 3),
        ("# 标题\n", "heading-level", 1),
        ("## 用户发言 English\n- 说话\n", "heading-chinese", 1),
        ("## 基础信息\n- 邮箱 a@b.com\n", "pii", 2),
        ("## 基础信息\n- 身份证 11010519900307123X\n", "pii", 2),
        ("## 基础信息\n-没有空格\n", "list-only", 2),
        ("## 基础信息\n - 一个空格\n", "list-depth", 2),
    ],
)
def test_lint_rule_fires_on_line(markdown: str, rule: str, line: int) -> None:
    assert (line, rule) in {(issue.line, issue.rule) for issue in lint_document(markdown)}


def test_lint_issue_reads_in_chinese() -> None:
    issue = lint_document("- 没有标题\n")[0]
    assert str(issue) == "第 1 行 [orphan-item] 列表项不在任何标题下"


def test_lint_accepts_two_level_list() -> None:
    markdown = "## 基础信息\n- 消费记录：\n  - 项目：祛眼袋；金额：5200 元\n"
    assert lint_document(markdown) == []


# --- the warehouse form ----------------------------------------------------------------------


def test_documents_frame_round_trip() -> None:
    documents = [
        golden_document(),
        render_user_document({**USER, "user_id": "u2"}, [], [], []),
    ]
    frame = documents_frame(documents)
    assert frame.columns == ["cohort", "user_id", "markdown", "lines"]
    assert frame["markdown"].to_list() == [d.markdown for d in documents]
    assert documents_from_frame(frame) == documents
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    buffer.seek(0)
    assert documents_from_frame(pl.read_parquet(buffer)) == documents


def test_documents_frame_of_nothing() -> None:
    frame = documents_frame([])
    assert frame.height == 0
    assert documents_from_frame(frame) == []


def test_doc_line_with_null_fields_round_trips() -> None:
    document = UserDocument("u3", "c", [DocLine("基础信息", None, "女", None)])
    assert documents_from_frame(documents_frame([document])) == [document]


def test_render_cohort_documents_groups_rows_by_user_in_id_order() -> None:
    users = pl.DataFrame(
        [
            {**USER, "user_id": "u2"},
            USER,
        ]
    )
    sales = pl.DataFrame([{**o, "user_id": "u1"} for o in ORDERS])
    behaviour = pl.DataFrame([{**e, "user_id": "u1"} for e in EVENTS])
    chat = pl.DataFrame(
        [{**MESSAGES[0], "user_id": "u1"}, {**MESSAGES[1], "user_id": "u1"}],
        schema_overrides={"channel": pl.String},
    )
    documents = render_cohort_documents(users, sales, behaviour, chat.clear(), CLINIC_LAYOUT)
    assert [d.user_id for d in documents] == ["u1", "u2"]
    assert documents[1].markdown == "## 基础信息\n- 女，28 岁，常住北京，2023-08-01 注册\n"
    documents = render_cohort_documents(users, sales, behaviour, chat, CLINIC_LAYOUT)
    assert documents[0].markdown == GOLDEN
