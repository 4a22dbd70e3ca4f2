"""The `user_profiles` and `profile_failures` rows: written from a batch's outcomes, read
back as each user's latest profile, the failures still open and the input keys that are
settled (not asked again)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from profiling_assets.core.profiling.outcome import ProfileOutcome
from profiling_assets.core.profiling.plan import PendingProfile
from profiling_assets.models.base import SETTLING_KINDS, FailureKind

PROFILE_ROW_SCHEMA = {
    "cohort": pl.String,
    "user_id": pl.String,
    "run_id": pl.String,
    "llm_identity": pl.String,
    "prompt_version": pl.String,
    "input_key": pl.String,
    "profile_json": pl.String,
    "facts_json": pl.String,
    "filled_fields": pl.List(pl.String),
    "novel_labels": pl.List(pl.String),
    "evidence_ids": pl.List(pl.String),
    "attempts": pl.Int64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "created_at": pl.Datetime("us"),
}
FAILURE_ROW_SCHEMA = {
    "cohort": pl.String,
    "user_id": pl.String,
    "run_id": pl.String,
    "llm_identity": pl.String,
    "input_key": pl.String,
    "reason": pl.String,
    "kind": pl.String,  # a `FailureKind`: whether a later run asks again by itself
    "attempt_errors": pl.List(pl.String),
    "attempts": pl.Int64,
    "created_at": pl.Datetime("us"),
}


def outcome_rows(
    cohort: str,
    run_id: str,
    llm_identity: str,
    prompt_version: str,
    batch: Sequence[PendingProfile],
    outcomes: Sequence[ProfileOutcome],
    now: datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(user_profiles rows, profile_failures rows) for one batch; nothing is dropped."""
    profiles, failures = [], []
    for pending, outcome in zip(batch, outcomes, strict=True):
        base = {"cohort": cohort, "user_id": outcome.user_id, "run_id": run_id}
        base |= {"llm_identity": llm_identity, "input_key": pending.key, "created_at": now}
        if outcome.profile is not None:
            profiles.append(
                base
                | {
                    "prompt_version": prompt_version,
                    "profile_json": outcome.profile.model_dump_json(),
                    "facts_json": pending.item.facts.model_dump_json(),
                    "filled_fields": list(outcome.filled_fields),
                    "novel_labels": list(outcome.novel_labels),
                    # The evidence set the profile may cite: retrieved + added by the rules.
                    "evidence_ids": list(dict.fromkeys(e.chunk_id for e in pending.item.evidence)),
                    "attempts": outcome.attempts,
                    "prompt_tokens": outcome.prompt_tokens,
                    "completion_tokens": outcome.completion_tokens,
                    "latency_s": outcome.latency_s,
                }
            )
        else:
            failures.append(
                base
                | {
                    "reason": outcome.error or "未知错误",
                    "kind": outcome.failure_kind or "bad_answer",
                    "attempt_errors": list(outcome.attempt_errors),
                    "attempts": outcome.attempts,
                }
            )
    return (
        pl.DataFrame(profiles, schema=PROFILE_ROW_SCHEMA),
        pl.DataFrame(failures, schema=FAILURE_ROW_SCHEMA),
    )


def latest_profiles(rows: pl.DataFrame, llm_identity: str) -> pl.DataFrame:
    """Each user's newest profile from one model (history stays in the table)."""
    if rows.height == 0:
        return pl.DataFrame(schema=PROFILE_ROW_SCHEMA)
    return (
        rows.filter(pl.col("llm_identity") == llm_identity)
        .sort("created_at")
        .unique("user_id", keep="last")
        .sort("user_id")
    )


def failure_kind_of(reason: str) -> FailureKind:
    """The kind of a failure row written before kinds were stored, from its reason text."""
    if reason.startswith("模型调用失败"):
        return "transport"
    if "截断" in reason:
        return "truncated"
    if "复述了系统提示" in reason:
        return "leak"
    return "bad_answer"


def failure_kinds(failures: pl.DataFrame) -> pl.Series:
    """Each failure row's kind: the stored one, or for older rows the one its reason shows."""
    stored = failures["kind"] if "kind" in failures.columns else [None] * failures.height
    reasons = failures["reason"] if "reason" in failures.columns else [""] * failures.height
    return pl.Series(
        "kind",
        [k or failure_kind_of(r or "") for k, r in zip(stored, reasons, strict=True)],
        dtype=pl.String,
    )


def finished_input_keys(
    latest: pl.DataFrame, failures: pl.DataFrame, llm_identity: str, retry_failed: bool
) -> dict[str, frozenset[str]]:
    """user → the input keys that are settled for this model: a user whose CURRENT key is
    among them is not asked again.

    - The key of the user's latest profile from this model (`latest`, from
      `latest_profiles`). Only the latest: were data to go back to an older key, the stored
      latest profile would describe other data, so that user is asked again.
    - Unless `retry_failed`: every key that failed with a settling kind (bad answer, refusal,
      prompt leak). Temperature-0 answers repeat, so re-asking the same question of the
      same model only repeats the failure; a change of data, prompt or model asks again.
      Transport and truncated failures never settle: the next run asks again by itself,
      once the server is back or max_tokens / the context was raised.
    """
    settled: dict[str, set[str]] = {}
    for user_id, key in zip(latest["user_id"], latest["input_key"], strict=True):
        settled.setdefault(user_id, set()).add(key)
    if not retry_failed and failures.height:
        mine = failures.filter(pl.col("llm_identity") == llm_identity)
        kinds = failure_kinds(mine)
        for user_id, key, kind in zip(mine["user_id"], mine["input_key"], kinds, strict=True):
            if kind in SETTLING_KINDS:
                settled.setdefault(user_id, set()).add(key)
    return {user_id: frozenset(keys) for user_id, keys in settled.items()}


def open_failures(
    profiles: pl.DataFrame, failures: pl.DataFrame, llm_identity: str
) -> tuple[pl.DataFrame, int]:
    """(each user's latest failure with this model not followed by a profile, users with any
    outcome): the cohort's state, so a re-run that skips settled failures still reports them."""
    mine = (
        failures.filter(pl.col("llm_identity") == llm_identity)
        if failures.height
        else pl.DataFrame(schema=FAILURE_ROW_SCHEMA)
    )
    made = latest_profiles(profiles, llm_identity)
    last_failure = mine.sort("created_at").unique("user_id", keep="last")
    profiled_at = dict(zip(made["user_id"], made["created_at"], strict=True))
    still_failed = last_failure.filter(
        pl.struct("user_id", "created_at").map_elements(
            lambda r: (
                r["user_id"] not in profiled_at or r["created_at"] > profiled_at[r["user_id"]]
            ),
            return_dtype=pl.Boolean,
        )
    )
    users = set(made["user_id"]) | set(last_failure["user_id"])
    return still_failed.sort("user_id"), len(users)
