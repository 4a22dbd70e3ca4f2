"""Profile input keys move only for the user whose data changed."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl

from profiling_assets.core.profile_inputs import facts_as_of, finished_input_keys


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


def test_recorded_failures_are_settled_unless_retry_is_asked() -> None:
    profiles = pl.DataFrame({"user_id": ["u1"], "input_key": ["k1"]})
    failures = pl.DataFrame(
        {
            "user_id": ["u2", "u3"],
            "input_key": ["k2", "k3"],
            "llm_identity": ["m", "other-model"],
            "created_at": [datetime(2025, 1, 1), datetime(2025, 1, 1)],
        }
    )
    assert finished_input_keys(profiles, failures, "m", retry_failed=False) == {
        "u1": "k1",
        "u2": "k2",
    }
    assert finished_input_keys(profiles, failures, "m", retry_failed=True) == {"u1": "k1"}


def test_open_failures_are_the_cohort_state_not_the_last_run() -> None:
    from profiling_assets.core.profile_inputs import (
        FAILURE_ROW_SCHEMA,
        PROFILE_ROW_SCHEMA,
        open_failures,
    )

    def row(schema: dict, **values: object) -> dict:
        return {name: values.get(name) for name in schema}

    profiles = pl.DataFrame(
        [
            row(
                PROFILE_ROW_SCHEMA,
                user_id="u1",
                llm_identity="m",
                input_key="a",
                created_at=datetime(2025, 1, 2),
            )
        ],
        schema=PROFILE_ROW_SCHEMA,
    )
    failures = pl.DataFrame(
        [
            row(
                FAILURE_ROW_SCHEMA, user_id="u1", llm_identity="m", created_at=datetime(2025, 1, 1)
            ),
            row(
                FAILURE_ROW_SCHEMA, user_id="u2", llm_identity="m", created_at=datetime(2025, 1, 1)
            ),
            row(
                FAILURE_ROW_SCHEMA, user_id="u3", llm_identity="x", created_at=datetime(2025, 1, 1)
            ),
        ],
        schema=FAILURE_ROW_SCHEMA,
    )
    failed, tried = open_failures(profiles, failures, "m")
    assert failed["user_id"].to_list() == ["u2"]  # u1 failed once, then got its profile
    assert tried == 2
