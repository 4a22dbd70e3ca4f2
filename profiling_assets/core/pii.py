"""Mask personal data before anything is written: documents, chunks, vectors, prompts, reports."""

from __future__ import annotations

import re

# Order matters: the longer digit runs (ID and bank card numbers) are masked before phones,
# so an 18-digit ID is never half-masked as a phone number.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[邮箱]"),
    (re.compile(r"(?<!\d)\d{6}(?:19|20)\d{2}(?:0[1-9]|1[0-2])\d{5}[\dXx](?!\d)"), "[身份证号]"),
    (re.compile(r"(?<!\d)(?:\d[ -]?){15,18}\d(?!\d)"), "[银行卡号]"),
    (re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)"), "[手机号]"),
)


def mask_pii(text: str) -> str:
    """Replace phone numbers, 18-digit ID numbers, emails and bank card numbers by a tag."""
    for pattern, tag in _PATTERNS:
        text = pattern.sub(tag, text)
    return text


def find_pii(text: str) -> list[str]:
    """The PII-looking substrings left in `text` (for checks and tests; empty = clean)."""
    return [m.group(0) for pattern, _ in _PATTERNS for m in pattern.finditer(text)]
