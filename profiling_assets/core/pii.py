"""Mask personal data before anything is written: documents, chunks, vectors, prompts, reports.

Masking starts at intake: the validated copies of the source tables and `rejected_rows` hold
masked text already, so personal data stays in the source. Ids that are themselves personal
data (a phone number used as customer id) are replaced by a stable pseudonym rather than a
tag, so the rows of one customer still join across tables.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import polars as pl

# Order matters: the longer digit runs (ID and bank card numbers) are masked before phones,
# so an 18-digit ID is never half-masked as a phone number.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[邮箱]"),
    (re.compile(r"(?<!\d)\d{6}(?:19|20)\d{2}(?:0[1-9]|1[0-2])\d{5}[\dXx](?!\d)"), "[身份证号]"),
    (re.compile(r"(?<!\d)(?:\d[ -]?){15,18}\d(?!\d)"), "[银行卡号]"),
    (re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)"), "[手机号]"),
)
# Every pattern needs an '@' or at least 11 digits: texts without either are skipped cheaply,
# so masking a column of a million messages runs the Python patterns on the few that matter.
_MAY_HOLD_PII = r"[@＠]|(?:\d\D*){11}"
PSEUDONYM_PREFIX = "pii_"


# Full-width digits and signs (typed on a Chinese keyboard) are matched as their ASCII twins.
# One character for one, so a match in the probe is the same span in the original text.
_HALF_WIDTH = str.maketrans(
    {chr(0xFF10 + i): str(i) for i in range(10)} | {"＠": "@", "＋": "+", "－": "-", "　": " "}
)


# Text masked at intake is masked again when documents are written, after their Markdown
# neutraliser turned `[` into `［`: a tag comes back in its one spelling either way.
_NEUTRALISED_TAGS = {f"［{tag[1:-1]}］": tag for _, tag in _PATTERNS}


def mask_pii(text: str) -> str:
    """Replace phone numbers, 18-digit ID numbers, emails and bank card numbers by a tag."""
    for pattern, tag in _PATTERNS:
        probe = text.translate(_HALF_WIDTH)
        pieces, last = [], 0
        for match in pattern.finditer(probe):
            pieces += [text[last : match.start()], tag]
            last = match.end()
        text = "".join([*pieces, text[last:]]) if pieces else text
    if "［" in text:
        for neutralised, tag in _NEUTRALISED_TAGS.items():
            text = text.replace(neutralised, tag)
    return text


def find_pii(text: str) -> list[str]:
    """The PII-looking substrings left in `text` (for checks and tests; empty = clean)."""
    probe = text.translate(_HALF_WIDTH)
    return [text[m.start() : m.end()] for pattern, _ in _PATTERNS for m in pattern.finditer(probe)]


def pseudonymise_id(value: str) -> str:
    """An id holding personal data becomes `pii_` + 16 base32 characters of its SHA-256;
    others stay.

    Base32 letters and the digits 2–7 only: a pseudonym can never look like a phone, ID or
    card number itself. Unsalted, so the same id maps to the same pseudonym in every table and
    every run; it hides the number from readers of the warehouse, not from someone who hashes
    every possible phone number.
    """
    if not find_pii(value):
        return value
    digest = hashlib.sha256(value.strip().encode("utf-8")).digest()
    return PSEUDONYM_PREFIX + base64.b32encode(digest).decode("ascii")[:16].lower()


def mask_pii_series(values: pl.Series) -> pl.Series:
    """`mask_pii` over a text column (nulls stay null)."""
    return _replace_where_pii(values, mask_pii)


def pseudonymise_id_series(values: pl.Series) -> pl.Series:
    """`pseudonymise_id` over a text column (nulls stay null)."""
    return _replace_where_pii(values, pseudonymise_id)


def _replace_where_pii(values: pl.Series, replace: Callable[[str], str]) -> pl.Series:
    # Only the values the cheap Rust-regex test flags go through the Python patterns.
    hits = values.str.contains(_MAY_HOLD_PII).fill_null(False)
    if not hits.any():
        return values
    where = hits.arg_true()
    replaced = [replace(v) for v in values.gather(where).to_list()]
    return values.clone().scatter(where, replaced)
