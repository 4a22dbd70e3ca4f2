"""Lint a user document against the golden structure: the known `##` sections in order,
`###` only for sales subsections, Chinese headings, list items at most two levels deep, and
no empty heading, table, code, HTML, English key:value line or unmasked personal data.

Each rule has an id so the blocking asset check can say which one a document broke.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from profiling_assets.core.documents import (
    SECTION_BASIC,
    SECTION_BROWSING,
    SECTION_CHAT,
    SECTION_SALES,
)
from profiling_assets.core.pii import find_pii
from profiling_assets.core.text import has_cjk

SECTION_ORDER = (SECTION_BASIC, SECTION_SALES, SECTION_BROWSING, SECTION_CHAT)
# Without a spec's list, any `### …消费` heading is a sales subsection.
SALES_SUBSECTION_SUFFIX = "消费"

_HEADING = re.compile(r"^(#+)\s*(.*)$")
_LIST_ITEM = re.compile(r"^( *)- (\S.*)$")
_ASCII_KEY_VALUE = re.compile(r"^\s*(?:- )?[A-Za-z_][A-Za-z0-9_ ]*\s*[:=]\s*\S")
_TABLE = re.compile(r"(^\s*\|)|(\|\s*:?-{3,})")


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


@dataclass
class _Walk:
    """Where the lint stands while it reads a document top to bottom."""

    sales_headings: Collection[str] | None
    issues: list[LintIssue] = field(default_factory=list)
    section: str | None = None
    seen_sections: list[str] = field(default_factory=list)
    # items counted per heading line: a `###` counts for itself and for its `##`
    items_of: dict[int, int] = field(default_factory=dict)
    open_section: int = 0
    open_subsection: int = 0


def _markup_issues(number: int, line: str) -> list[LintIssue]:
    """Issues any line can have: tables, code or HTML, English key:value, raw PII."""
    issues: list[LintIssue] = []
    if _TABLE.search(line):
        issues.append(LintIssue(number, "no-table", "不允许表格"))
    if line.lstrip().startswith(("```", "~~~", "<")):
        issues.append(LintIssue(number, "no-code-or-html", "不允许代码块或 HTML"))
    if _ASCII_KEY_VALUE.match(line):
        issues.append(LintIssue(number, "no-key-value", "不允许英文 key:value 行"))
    issues.extend(
        LintIssue(number, "pii", f"含未脱敏的个人信息：{found[:4]}…") for found in find_pii(line)
    )
    return issues


def _read_heading(walk: _Walk, number: int, level: int, title: str) -> None:
    walk.items_of[number] = 0
    if level == 2:
        walk.open_section, walk.open_subsection = number, 0
    elif level == 3:
        walk.open_subsection = number
    if level not in (2, 3):
        walk.issues.append(
            LintIssue(number, "heading-level", f"只允许 ## 和 ###，此处为 {level} 级")
        )
        return
    if not has_cjk(title) or re.search(r"[A-Za-z]", title):
        walk.issues.append(LintIssue(number, "heading-chinese", f"标题必须是中文：{title}"))
    if level == 2:
        _read_section(walk, number, title)
    elif not _known_subsection(walk.section, title, walk.sales_headings):
        walk.issues.append(LintIssue(number, "heading-known", f"不属于当前章节的二级标题：{title}"))


def _read_section(walk: _Walk, number: int, title: str) -> None:
    """A `##` heading: one of the known sections, in their order, each at most once."""
    if title not in SECTION_ORDER:
        walk.issues.append(LintIssue(number, "heading-known", f"未知的一级标题：{title}"))
    elif walk.seen_sections and SECTION_ORDER.index(title) <= SECTION_ORDER.index(
        walk.seen_sections[-1]
    ):
        walk.issues.append(LintIssue(number, "section-order", f"标题顺序或重复错误：{title}"))
    walk.section = title
    walk.seen_sections.append(title)


def _read_body_line(walk: _Walk, number: int, line: str) -> None:
    """A line that is not a heading: a list item of at most two levels under a heading."""
    item = _LIST_ITEM.match(line)
    if not item:
        walk.issues.append(LintIssue(number, "list-only", "正文必须是列表项"))
        return
    if len(item.group(1)) not in (0, 2):
        walk.issues.append(LintIssue(number, "list-depth", "列表最多两级"))
    if walk.section is None:
        walk.issues.append(LintIssue(number, "orphan-item", "列表项不在任何标题下"))
    for heading_line in {walk.open_section, walk.open_subsection} - {0}:
        walk.items_of[heading_line] += 1


def lint_document(markdown: str, sales_headings: Collection[str] | None = None) -> list[LintIssue]:
    """Issues of one document, by line; `sales_headings` are the spec's `### …消费`
    headings (without them any `### …消费` heading is a sales subsection)."""
    walk = _Walk(sales_headings)
    for number, line in enumerate(markdown.splitlines(), start=1):
        if not line.strip():
            continue
        walk.issues.extend(_markup_issues(number, line))
        heading = _HEADING.match(line)
        if heading:
            _read_heading(walk, number, len(heading.group(1)), heading.group(2).strip())
        else:
            _read_body_line(walk, number, line)
    walk.issues.extend(
        LintIssue(line, "empty-section", "标题下没有内容")
        for line, n in walk.items_of.items()
        if n == 0
    )
    return sorted(walk.issues, key=lambda issue: issue.line)
