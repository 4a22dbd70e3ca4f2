"""Profile input keys move only for the user whose data changed."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from profiling_assets.core.profiling.plan import facts_as_of
from profiling_assets.core.profiling.stored import finished_input_keys


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
    # user → the settled keys (a set since issue 12: one user can have several).
    assert finished_input_keys(profiles, failures, "m", retry_failed=False) == {
        "u1": {"k1"},
        "u2": {"k2"},
    }
    assert finished_input_keys(profiles, failures, "m", retry_failed=True) == {"u1": {"k1"}}


def _failures(*rows: tuple[str, str, str, str | None, int]) -> pl.DataFrame:
    """(user, key, reason, kind, day) rows of model "m", in the stored table's schema."""
    from profiling_assets.core.profiling.stored import FAILURE_ROW_SCHEMA

    return pl.DataFrame(
        [
            {
                "user_id": user,
                "input_key": key,
                "llm_identity": "m",
                "reason": reason,
                "kind": kind,
                "created_at": datetime(2025, 1, day),
            }
            for user, key, reason, kind, day in rows
        ],
        schema={k: FAILURE_ROW_SCHEMA[k] for k in ("user_id", "input_key", "llm_identity")}
        | {"reason": pl.String, "kind": pl.String, "created_at": pl.Datetime("us")},
    )


def test_a_user_profiled_at_k1_then_failed_at_k2_is_settled_at_k2() -> None:
    """The bug: one key per user and the oldest won, so k2's settled failure was lost behind
    k1's profile and every run asked the model again."""
    latest = pl.DataFrame({"user_id": ["u1"], "input_key": ["k1"]})
    failures = _failures(("u1", "k2", "JSON 不符合模式", "bad_answer", 2))
    settled = finished_input_keys(latest, failures, "m", retry_failed=False)
    assert "k2" in settled["u1"] and "k1" in settled["u1"]


def test_a_user_failed_at_k1_and_k2_is_settled_at_both() -> None:
    failures = _failures(
        ("u1", "k1", "输出不是合法 JSON", "bad_answer", 1),
        ("u1", "k2", "引用了不存在的证据 id：x", "bad_answer", 2),
    )
    settled = finished_input_keys(pl.DataFrame(schema=_LATEST), failures, "m", False)
    assert settled == {"u1": {"k1", "k2"}}


_LATEST = {"user_id": pl.String, "input_key": pl.String}


def test_transport_and_truncated_failures_never_settle() -> None:
    failures = _failures(
        ("u1", "k1", "模型调用失败：connection refused", "transport", 1),
        ("u2", "k2", "输出不是合法 JSON（输出被 max_tokens 截断）", "truncated", 1),
        ("u3", "k3", "模型拒绝回答：policy", "refused", 1),
        ("u4", "k4", "答案复述了系统提示：“…”", "leak", 1),
        # Rows stored before kinds were: the reason shows the kind.
        ("u5", "k5", "模型调用失败：ollama chat q: HTTP 500", None, 1),
        ("u6", "k6", "输出不是合法 JSON（输出被 max_tokens 截断，请更简短）", None, 1),
        ("u7", "k7", "与计算事实矛盾：…", None, 1),
    )
    settled = finished_input_keys(pl.DataFrame(schema=_LATEST), failures, "m", False)
    assert settled == {"u3": {"k3"}, "u4": {"k4"}, "u7": {"k7"}}


def test_only_the_latest_profile_key_settles() -> None:
    """Data back at an older key: the stored latest profile describes other data, ask again."""
    latest = pl.DataFrame({"user_id": ["u1"], "input_key": ["k2"]})
    settled = finished_input_keys(latest, _failures(), "m", retry_failed=False)
    assert settled == {"u1": {"k2"}}


def test_open_failures_are_the_cohort_state_not_the_last_run() -> None:
    from profiling_assets.core.profiling.stored import (
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


def test_a_user_profiled_at_k1_whose_k2_failed_is_asked_again_only_on_retry() -> None:
    """Data changed (k1 → k2) and k2's answer failed: settled at k2, unless retry is asked,
    and then k2 is open again while k1 (the latest profile) stays settled."""
    latest = pl.DataFrame({"user_id": ["u1"], "input_key": ["k1"]})
    failures = _failures(("u1", "k2", "JSON 不符合模式", "bad_answer", 2))
    assert finished_input_keys(latest, failures, "m", retry_failed=False) == {"u1": {"k1", "k2"}}
    assert finished_input_keys(latest, failures, "m", retry_failed=True) == {"u1": {"k1"}}
    # Another model's failure settles nothing for this one.
    assert finished_input_keys(latest, failures, "other", retry_failed=False) == {"u1": {"k1"}}


def _key_inputs() -> dict[str, object]:
    from profiling_assets.core.records import EvidenceItem, LabelCandidate, UserFacts
    from profiling_assets.core.spec_rules import RuleVerdict

    item = {"user_id": "u1", "question_id": "q1", "rank": 1, "heading_path": "用户发言"}
    return {
        "facts": UserFacts(user_id="u1", cohort="2025-01", as_of=date(2025, 1, 31)),
        "evidence": [
            EvidenceItem(**item, chunk_id="c1", retrieval_score=0.9, rerank_score=0.8, text="a")
        ],
        "candidates": [LabelCandidate(kind="tag", label="敏感肌", score=0.1, chunk_id="c1")],
        "llm_identity": "ollama|qwen|d1",
        "prompt_version": "p1",
        "verdict": RuleVerdict(intent_level="中", intent_reason="r"),
        "spec_hash": "s1",
        "answer_schema": "full",
    }


def _changed_input(name: str) -> object:
    from profiling_assets.core.records import EvidenceItem, LabelCandidate, UserFacts
    from profiling_assets.core.spec_rules import RuleVerdict

    item = {"user_id": "u1", "question_id": "q1", "rank": 1, "heading_path": "用户发言"}
    return {
        "facts": UserFacts(user_id="u1", cohort="2025-01", as_of=date(2025, 2, 28)),
        "evidence": [
            EvidenceItem(**item, chunk_id="c2", retrieval_score=0.9, rerank_score=0.8, text="a")
        ],
        "candidates": [LabelCandidate(kind="tag", label="抗老", score=0.1, chunk_id="c1")],
        "llm_identity": "ollama|qwen|d2",
        "prompt_version": "p2",
        "verdict": RuleVerdict(intent_level="高", intent_reason="r"),
        "spec_hash": "s2",
        "answer_schema": "compact",
    }[name]


@pytest.mark.parametrize("name", list(_key_inputs()))
def test_the_input_key_moves_with_each_of_its_inputs(name: str) -> None:
    from profiling_assets.core.profiling.plan import input_key

    same = _key_inputs()
    assert input_key(**same) == input_key(**_key_inputs())  # type: ignore[arg-type]
    changed = {**same, name: _changed_input(name)}
    assert input_key(**changed) != input_key(**same)  # type: ignore[arg-type]


def test_latest_profiles_keeps_each_users_newest_row_of_this_model() -> None:
    from profiling_assets.core.profiling.stored import PROFILE_ROW_SCHEMA, latest_profiles

    rows = [
        ("u1", "m", "old", datetime(2025, 1, 1)),
        ("u1", "m", "new", datetime(2025, 1, 3)),
        ("u1", "x", "other-model", datetime(2025, 1, 5)),
        ("u2", "m", "only", datetime(2025, 1, 2)),
    ]
    frame = pl.DataFrame(
        [
            {name: None for name in PROFILE_ROW_SCHEMA}
            | {"user_id": u, "llm_identity": m, "input_key": k, "created_at": t}
            for u, m, k, t in rows
        ],
        schema=PROFILE_ROW_SCHEMA,
    )
    latest = latest_profiles(frame.reverse(), "m")
    assert latest.select("user_id", "input_key").rows() == [("u1", "new"), ("u2", "only")]
