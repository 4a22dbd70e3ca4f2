"""PII masking over whole columns (the intake path) and pseudonyms for ids holding PII."""

from __future__ import annotations

import polars as pl
import pytest

from profiling_assets.core.pii import (
    PSEUDONYM_PREFIX,
    find_pii,
    mask_pii,
    mask_pii_series,
    pseudonymise_id,
    pseudonymise_id_series,
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("电话13812345678", "电话[手机号]"),  # exactly 11 digits: the cheap filter must pass it
        ("电话１３８１２３４５６７８", "电话[手机号]"),  # full-width, typed on a Chinese keyboard
        ("新号 199 1234 5678 和 166-1234-5678", "新号 [手机号] 和 [手机号]"),  # 19x, 16x
        ("邮箱ａ＠ｂ.cn 或 zhang.san@example.com", "邮箱ａ＠ｂ.cn 或 [邮箱]"),
        ("价格 1380 元", "价格 1380 元"),
    ],
)
def test_a_column_is_masked_like_each_value(text: str, masked: str) -> None:
    column = pl.Series("message", [text, None])
    assert mask_pii_series(column).to_list() == [masked, None]
    assert mask_pii(text) == masked


def test_an_id_holding_a_phone_becomes_a_stable_pseudonym() -> None:
    ids = pl.Series("user_id", ["13812345678", "u42", "13812345678", None])
    out = pseudonymise_id_series(ids).to_list()
    assert out[0] == out[2] == pseudonymise_id("13812345678")
    assert out[0].startswith(PSEUDONYM_PREFIX) and find_pii(out[0]) == []
    assert out[1] == "u42" and out[3] is None
