"""The shared text helpers: Chinese characters, display width, list cells."""

from __future__ import annotations

from typing import Any

import pytest

from profiling_assets.core.text import display_width, has_cjk, pad_to_width, parse_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [("全切双眼皮", True), ("标题 A", True), ("Basic info", False), ("１２３", False), ("", False)],
)
def test_has_cjk(text: str, expected: bool) -> None:
    assert has_cjk(text) is expected


@pytest.mark.parametrize(
    ("text", "width"),
    [("abc", 3), ("画像", 4), ("画像 ok", 7), ("（无）", 6), ("", 0)],
)
def test_display_width_counts_wide_characters_twice(text: str, width: int) -> None:
    assert display_width(text) == width


def test_pad_to_width_pads_by_display_columns_and_never_cuts() -> None:
    assert pad_to_width("画像", 6) == "画像  "
    assert pad_to_width("abc", 2) == "abc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("  ", []),
        (["a", None, " ", " b "], ["a", "b"]),
        (["'a'", '"b"'], ["a", "b"]),
        ('["高消费", "复购"]', ["高消费", "复购"]),
        ('"单项"', ['"单项"']),
        ("[a, b]", ["a", "b"]),
        ("a|b", ["a", "b"]),
        ("a;b", ["a", "b"]),
        ("眼袋、双眼皮", ["眼袋", "双眼皮"]),
        ("a,b", ["a", "b"]),
        ("a|b,c", ["a", "b,c"]),  # the first separator found wins
        ("单项", ["单项"]),
        ("[7]", ["7"]),
    ],
)
def test_parse_list(value: Any, expected: list[str]) -> None:
    assert parse_list(value) == expected
