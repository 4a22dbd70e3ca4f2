"""Profile input keys move only for the user whose data changed."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl

from profiling_assets.core.profile_inputs import facts_as_of


def _frames(*days: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    sales = pl.DataFrame({"order_date": [date.fromisoformat(d) for d in days]})
    behaviour = pl.DataFrame({"event_time": [datetime(2023, 1, 3, 9)]})
    chat = pl.DataFrame(schema={"sent_at": pl.Datetime("us")})
    return sales, behaviour, chat


def test_as_of_is_the_month_end_of_the_latest_record() -> None:
    assert facts_as_of(*_frames("2025-02-03")) == date(2025, 2, 28)
    assert facts_as_of(*_frames("2024-02-10", "2024-01-01")) == date(2024, 2, 29)
    assert facts_as_of(*_frames("2025-12-31")) == date(2025, 12, 31)


def test_a_new_record_in_the_same_month_does_not_move_everyones_facts() -> None:
    before = facts_as_of(*_frames("2025-06-02"))
    after = facts_as_of(*_frames("2025-06-02", "2025-06-30"))
    assert before == after
