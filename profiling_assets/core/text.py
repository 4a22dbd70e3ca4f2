"""Small text helpers shared across the package: Chinese characters, display width, list cells.

Pure functions on plain strings and values, no project types.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# CJK Unified Ideographs: "has Chinese in it" means at least one character of this block.
CJK = re.compile(r"[\u4e00-\u9fff]")
# Separators tried, in this order, when a text cell holds several items (`a|b`, `a、b` …).
LIST_SEPARATORS = ("|", ";", "、", ",")


def has_cjk(text: str) -> bool:
    """Whether `text` holds at least one Chinese character."""
    return CJK.search(text) is not None


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal or a monospace font: wide and full-width
    characters (CJK, full-width punctuation) take two, every other character one."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad_to_width(text: str, width: int) -> str:
    """`text` with spaces after it up to `width` display columns (never cut)."""
    return text + " " * max(0, width - display_width(text))


def parse_list(value: Any) -> list[str]:
    """A list cell as stripped strings, whatever stored it: a real list (None and blank items
    dropped, quotes around items removed), a JSON list (`["a", "b"]`), a bracketed list that
    is not JSON (`[a, b]`), text with one of `LIST_SEPARATORS` (`a|b`, `a;b`, `a、b`,
    `a,b`), or one plain item. None and blank text are the empty list."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = text[1:-1].split(",")
            return parse_list(parsed if isinstance(parsed, list) else [parsed])
        for separator in LIST_SEPARATORS:
            if separator in text:
                return parse_list(text.split(separator))
        return [text]
    return [str(v).strip().strip("'\"") for v in value if v is not None and str(v).strip()]
