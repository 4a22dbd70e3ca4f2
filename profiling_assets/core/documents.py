"""Render one user's records as Markdown in the golden structure.

`## 基础信息` / `## 消费记录` (one `### …消费` per sales section of the business spec, then
`### 其他消费`) / `## 浏览行为` / `## 用户发言`: Chinese semantic headings (embedders read them
as strong signals), at most `###`, one list level, each record one
natural sentence, empty sections left out. User text is neutralised so it cannot open a heading,
a table, a list or a code block, and personal data is masked before anything is written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl

from profiling_assets.core.pii import mask_pii
from profiling_assets.core.spec import OTHER_SALES_HEADING, ProfileSpec

SECTION_BASIC = "基础信息"
SECTION_SALES = "消费记录"
SECTION_BROWSING = "浏览行为"
SECTION_CHAT = "用户发言"
SUB_OTHER = OTHER_SALES_HEADING


@dataclass(frozen=True)
class SalesLayout:
    """Where each sales category goes under `## 消费记录`, in which order, and the money unit.
    The empty layout puts every order under `### 其他消费`."""

    section_of_category: Mapping[str, str] = field(default_factory=dict)
    headings: tuple[str, ...] = (SUB_OTHER,)
    currency: str = "元"

    @classmethod
    def from_spec(cls, spec: ProfileSpec) -> SalesLayout:
        return cls(spec.section_of_category, spec.sales_headings, spec.business.currency)


_MAX_FIELD_CHARS = 300  # behaviour targets, item names: long values are cut, messages are not
_MARKDOWN_OPENERS = str.maketrans(
    {
        "#": "＃",
        "|": "｜",
        "`": "ˋ",
        ">": "＞",
        "<": "＜",
        "*": "＊",
        "[": "［",
        "]": "］",
        "“": "「",
        "”": "」",
        '"': "＂",
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_SPACES = re.compile(r"\s+")
# A leading English `key:` / `key=` would read as key:value noise, which the document rules
# out: English and key:value lines pull a Chinese embedding away from the text's meaning.
_LEADING_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9 ]*)([:=])")
_FULL_WIDTH = {":": "：", "=": "＝"}


@dataclass(frozen=True)
class DocLine:
    """One list item of a document, with where it sits and which source row it came from."""

    section: str
    subsection: str | None
    text: str
    source_id: str | None = None


@dataclass
class UserDocument:
    user_id: str
    cohort: str
    lines: list[DocLine] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return render_markdown(self.lines)


def neutralise_user_text(text: str, limit: int | None = None) -> str:
    """Make free text safe inside one list item: one line, no Markdown syntax, no PII."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    # Mask after escaping so the mask tags keep their ASCII brackets; `_` (which e-mail
    # addresses hold and the tags do not) is escaped after masking so an address is masked whole.
    text = mask_pii(text.translate(_MARKDOWN_OPENERS)).replace("_", "＿")
    text = _LEADING_KEY.sub(lambda m: m.group(1) + _FULL_WIDTH[m.group(2)], text)
    # A leading list marker or ordered-list number would open a nested list inside the item.
    text = re.sub(r"^([-+=]|\d+[.)])", r"\\\1", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def render_markdown(lines: Sequence[DocLine]) -> str:
    out: list[str] = []
    section: str | None = None
    subsection: str | None = None
    for line in lines:
        if line.section != section:
            if out:
                out.append("")
            out.append(f"## {line.section}")
            section, subsection = line.section, None
        if line.subsection and line.subsection != subsection:
            out.append(f"### {line.subsection}")
            subsection = line.subsection
        out.append(f"- {line.text}")
    return "\n".join(out) + "\n" if out else ""


def _fmt_day(value: date | datetime | None) -> str:
    if value is None:
        return "日期不详"
    return value.strftime("%Y-%m-%d")


def _fmt_amount(amount: float) -> str:
    return f"{amount:.0f}" if float(amount).is_integer() else f"{amount:.2f}"


# Optional users column (identity stitching): `手机号 2 个、会员号 1 个`, from `persons`.
ID_SOURCES_COLUMN = "id_sources"


def basic_line(user: dict[str, Any]) -> DocLine:
    parts: list[str] = []
    gender = user.get("gender")
    if gender:
        parts.append(neutralise_user_text(str(gender), 10))
    if user.get("age") is not None:
        parts.append(f"{int(user['age'])} 岁")
    if user.get("city"):
        parts.append(f"常住{neutralise_user_text(str(user['city']), 30)}")
    parts.append(f"{_fmt_day(user.get('signup_date'))} 注册")
    if user.get(ID_SOURCES_COLUMN):  # stitched from several ids: their counts, never the ids
        parts.append(f"身份来源：{user[ID_SOURCES_COLUMN]}")
    return DocLine(SECTION_BASIC, None, "，".join(parts), user.get("user_id"))


def sales_lines(
    orders: Iterable[dict[str, Any]], layout: SalesLayout = SalesLayout()
) -> list[DocLine]:
    by_sub: dict[str, list[DocLine]] = {heading: [] for heading in layout.headings}
    currency = neutralise_user_text(layout.currency, 4)
    for order in sorted(orders, key=lambda o: (o["order_date"], o["order_id"])):
        sub = layout.section_of_category.get(order.get("category") or "", SUB_OTHER)
        item = neutralise_user_text(str(order["item"]), _MAX_FIELD_CHARS)
        amount, day = _fmt_amount(order["amount"]), _fmt_day(order["order_date"])
        text = f"项目：{item}；金额：{amount} {currency}；日期：{day}"
        by_sub[sub].append(DocLine(SECTION_SALES, sub, text, order["order_id"]))
    return [line for sub in layout.headings for line in by_sub[sub]]


def behaviour_lines(events: Iterable[dict[str, Any]]) -> list[DocLine]:
    lines = []
    for event in sorted(events, key=lambda e: (e["event_time"], e["event_id"])):
        kind = neutralise_user_text(str(event["event_type"]), 20)
        target = neutralise_user_text(str(event["target"]), _MAX_FIELD_CHARS)
        text = f"{kind}：{target}（{_fmt_day(event['event_time'])}）"
        lines.append(DocLine(SECTION_BROWSING, None, text, event["event_id"]))
    return lines


def chat_lines(messages: Iterable[dict[str, Any]]) -> list[DocLine]:
    lines = []
    for message in sorted(messages, key=lambda m: (m["sent_at"], m["message_id"])):
        channel = message.get("channel")
        where = f"在{neutralise_user_text(str(channel), 20)}" if channel else ""
        said = neutralise_user_text(str(message["message"]))
        text = f"{_fmt_day(message['sent_at'])} {where}说：“{said}”"
        lines.append(DocLine(SECTION_CHAT, None, text, message["message_id"]))
    return lines


def render_user_document(
    user: dict[str, Any],
    orders: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    messages: Sequence[dict[str, Any]],
    layout: SalesLayout = SalesLayout(),
) -> UserDocument:
    """One user's document; sections without records are left out (基础信息 always exists)."""
    lines = [basic_line(user), *sales_lines(orders, layout), *behaviour_lines(events)]
    lines += chat_lines(messages)
    return UserDocument(user_id=user["user_id"], cohort=user["cohort"], lines=lines)


def _rows_by_user(df: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    if df.height == 0:
        return grouped
    for row in df.iter_rows(named=True):
        grouped.setdefault(row["user_id"], []).append(row)
    return grouped


def render_cohort_documents(
    users: pl.DataFrame,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    layout: SalesLayout = SalesLayout(),
) -> list[UserDocument]:
    """One document per accepted user, in user id order."""
    orders, events, messages = _rows_by_user(sales), _rows_by_user(behaviour), _rows_by_user(chat)
    return [
        render_user_document(
            user,
            orders.get(user["user_id"], []),
            events.get(user["user_id"], []),
            messages.get(user["user_id"], []),
            layout,
        )
        for user in users.sort("user_id").iter_rows(named=True)
    ]


LINE_STRUCT = pl.Struct(
    {"section": pl.String, "subsection": pl.String, "text": pl.String, "source_id": pl.String}
)


def documents_frame(documents: Sequence[UserDocument]) -> pl.DataFrame:
    """The warehouse form: markdown for people, structured lines for the chunker."""
    return pl.DataFrame(
        {
            "cohort": [d.cohort for d in documents],
            "user_id": [d.user_id for d in documents],
            "markdown": [d.markdown for d in documents],
            "lines": [[vars(line) for line in d.lines] for d in documents],
        },
        schema={
            "cohort": pl.String,
            "user_id": pl.String,
            "markdown": pl.String,
            "lines": pl.List(LINE_STRUCT),
        },
    )


def documents_from_frame(df: pl.DataFrame) -> list[UserDocument]:
    return [
        UserDocument(row["user_id"], row["cohort"], [DocLine(**line) for line in row["lines"]])
        for row in df.iter_rows(named=True)
    ]
