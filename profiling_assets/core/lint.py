"""Lint a user document against the golden-structure rules of the seed notes.

Each rule has an id so the blocking asset check can say which one a document broke.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from profiling_assets.core.documents import (
    SECTION_BASIC,
    SECTION_BROWSING,
    SECTION_CHAT,
    SECTION_SALES,
)
from profiling_assets.core.pii import find_pii

SECTION_ORDER = (SECTION_BASIC, SECTION_SALES, SECTION_BROWSING, SECTION_CHAT)
# Without a spec's list, any `### …消费` heading is a sales subsection.
SALES_SUBSECTION_SUFFIX = "消费"

_HEADING = re.compile(r"^(#+)\s*(.*)$")
_LIST_ITEM = re.compile(r"^( *)- (\S.*)$")
_ASCII_KEY_VALUE = re.compile(r"^\s*(?:- )?[A-Za-z_][A-Za-z0-9_ ]*\s*[:=]\s*\S")
_TABLE = re.compile(r"(^\s*\|)|(\|\s*:?-{3,})")
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class LintIssue:
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"第 {self.line} 行 [{self.rule}] {self.message}"


def _known_subsection(
    section: str | None, title: str, sales_headings: Collection[str] | None
) -> bool:
    if section != SECTION_SALES:
        return False
    if sales_headings is None:
        return title.endswith(SALES_SUBSECTION_SUFFIX)
    return title in sales_headings


def lint_document(markdown: str, sales_headings: Collection[str] | None = None) -> list[LintIssue]:
    """Issues of one document; `sales_headings` are the spec's `### …消费` headings."""
    issues: list[LintIssue] = []
    section: str | None = None
    seen_sections: list[str] = []
    # items counted per heading line: a `###` counts for itself and for its `##`
    items_of: dict[int, int] = {}
    open_section = open_subsection = 0

    for number, line in enumerate(markdown.splitlines(), start=1):
        if not line.strip():
            continue
        if _TABLE.search(line):
            issues.append(LintIssue(number, "no-table", "不允许表格"))
        if line.lstrip().startswith(("```", "~~~", "<")):
            issues.append(LintIssue(number, "no-code-or-html", "不允许代码块或 HTML"))
        if _ASCII_KEY_VALUE.match(line):
            issues.append(LintIssue(number, "no-key-value", "不允许英文 key:value 行"))
        issues.extend(
            LintIssue(number, "pii", f"含未脱敏的个人信息：{found[:4]}…")
            for found in find_pii(line)
        )
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            items_of[number] = 0
            if level == 2:
                open_section, open_subsection = number, 0
            elif level == 3:
                open_subsection = number
            if level not in (2, 3):
                issues.append(
                    LintIssue(number, "heading-level", f"只允许 ## 和 ###，此处为 {level} 级")
                )
                continue
            if not _CJK.search(title) or re.search(r"[A-Za-z]", title):
                issues.append(LintIssue(number, "heading-chinese", f"标题必须是中文：{title}"))
            if level == 2:
                if title not in SECTION_ORDER:
                    issues.append(LintIssue(number, "heading-known", f"未知的一级标题：{title}"))
                elif seen_sections and SECTION_ORDER.index(title) <= SECTION_ORDER.index(
                    seen_sections[-1]
                ):
                    issues.append(
                        LintIssue(number, "section-order", f"标题顺序或重复错误：{title}")
                    )
                section = title
                seen_sections.append(title)
            elif not _known_subsection(section, title, sales_headings):
                issues.append(
                    LintIssue(number, "heading-known", f"不属于当前章节的二级标题：{title}")
                )
            continue
        item = _LIST_ITEM.match(line)
        if not item:
            issues.append(LintIssue(number, "list-only", "正文必须是列表项"))
            continue
        indent = len(item.group(1))
        if indent not in (0, 2):
            issues.append(LintIssue(number, "list-depth", "列表最多两级"))
        if section is None:
            issues.append(LintIssue(number, "orphan-item", "列表项不在任何标题下"))
        for heading_line in {open_section, open_subsection} - {0}:
            items_of[heading_line] += 1
    issues.extend(
        LintIssue(line, "empty-section", "标题下没有内容") for line, n in items_of.items() if n == 0
    )
    return sorted(issues, key=lambda issue: issue.line)
