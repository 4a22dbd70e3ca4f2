"""What each user's profile is built from, and the key that says whether it changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from profiling_assets.core.anomalies import AnomalyFinding, detect_anomalies
from profiling_assets.core.facts import compute_user_facts, facts_records
from profiling_assets.core.profiling import ProfileInput, ProfileOutcome
from profiling_assets.core.records import EvidenceItem, SignalCandidate, UserFacts
from profiling_assets.core.signals import (
    BACKGROUND_PASSAGES,
    LabelIndex,
    keyword_hits,
    score_label_candidates,
)
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.core.spec_rules import (
    AnomalyVerdict,
    ProfilePolicy,
    RuleVerdict,
    decide_intent,
)
from profiling_assets.models.base import SETTLING_KINDS, Embedder, FailureKind

PROFILE_SCHEMA_VERSION = "s2"
# Evidence added by the spec's rules (a label named literally, an anomaly's rows) rather
# than retrieved for a question.
RULE_QUESTION_ID = "rule"

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


def facts_as_of(sales: pl.DataFrame, behaviour: pl.DataFrame, chat: pl.DataFrame) -> date:
    """The last day of the month of the cohort's latest record.

    Not today: unchanged data must give unchanged facts (and so no re-profiling); and not the
    latest record itself, or one user's new message would move every user's recency facts.
    Recency is refreshed when the data reaches a new month."""
    latest = [
        frame[column].max()
        for frame, column in ((sales, "order_date"), (behaviour, "event_time"), (chat, "sent_at"))
        if frame.height
    ]
    days = [v.date() if hasattr(v, "date") else v for v in latest if v is not None]
    if not days:
        return date(1970, 1, 1)
    latest_day = max(days)
    next_month = (latest_day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return next_month - timedelta(days=1)


def evidence_by_user(frame: pl.DataFrame) -> dict[str, list[EvidenceItem]]:
    fields = list(EvidenceItem.model_fields)
    grouped: dict[str, list[EvidenceItem]] = {}
    for row in frame.sort("user_id", "question_id", "rank").select(fields).iter_rows(named=True):
        grouped.setdefault(row["user_id"], []).append(EvidenceItem(**row))
    return grouped


def user_candidates(
    index: LabelIndex,
    evidence: Sequence[EvidenceItem],
    vectors_by_chunk: dict[str, np.ndarray],
    top_per_kind: int = 3,
) -> list[SignalCandidate]:
    """Labels scored over the user's evidence chunks only, so every citation is citable;
    labels the user names literally in those chunks are boosted (`keyword_hits`)."""
    unique = {item.chunk_id: item.text for item in evidence}
    chunk_ids = [c for c in unique if c in vectors_by_chunk]
    if not chunk_ids:
        return []
    matrix = np.stack([vectors_by_chunk[c] for c in chunk_ids])
    hits = keyword_hits(index.labels, [(c, unique[c]) for c in chunk_ids])
    return score_label_candidates(index, chunk_ids, matrix, top_per_kind=top_per_kind, hits=hits)


def rule_evidence(
    user_id: str,
    user_chunks: pl.DataFrame,
    evidence: Sequence[EvidenceItem],
    index: LabelIndex,
    findings: Sequence[AnomalyFinding],
) -> tuple[list[EvidenceItem], dict[str, list[str]]]:
    """Chunks the rules need beyond the retrieved evidence: where the user names a label
    literally and where an anomaly's rows sit. Returns (extra evidence items, anomaly name
    → chunk ids)."""
    held = {e.chunk_id for e in evidence}
    rows = user_chunks.select("chunk_id", "text", "heading_path", "source_ids").rows()
    wanted = set(keyword_hits(index.labels, [(r[0], r[1]) for r in rows]).values())
    anomaly_chunks: dict[str, list[str]] = {}
    for finding in findings:
        ids = set(finding.source_ids)
        chunks = [r[0] for r in rows if ids.intersection(r[3] or [])]
        anomaly_chunks[finding.anomaly] = chunks
        wanted.update(chunks)
    extra = [
        EvidenceItem(
            user_id=user_id,
            question_id=RULE_QUESTION_ID,
            chunk_id=chunk_id,
            rank=1,
            retrieval_score=0.0,
            rerank_score=0.0,
            heading_path=heading,
            text=text,
        )
        for chunk_id, text, heading, _ in rows
        if chunk_id in wanted and chunk_id not in held
    ]
    return extra, anomaly_chunks


def input_key(
    facts: UserFacts,
    evidence: Sequence[EvidenceItem],
    candidates: Sequence[SignalCandidate],
    llm_identity: str,
    prompt_version: str,
    verdict: RuleVerdict,
    spec_hash: str,
    answer_schema: str = "full",
) -> str:
    """Changes exactly when the profile's inputs, the rules' verdict, the spec, the model,
    the prompt or the answer schema (compact / full) change."""
    payload = {
        "facts": facts.model_dump(mode="json"),
        "evidence": [(e.question_id, e.chunk_id, e.rank) for e in evidence],
        "candidates": [(c.kind, c.label, round(c.score, 4), c.chunk_id) for c in candidates],
        "verdict": verdict.key(),
        "spec": spec_hash,
        "llm": llm_identity,
        "prompt": prompt_version,
        "schema": PROFILE_SCHEMA_VERSION,
        "answer_schema": answer_schema,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PendingProfile:
    key: str
    item: ProfileInput


@dataclass(frozen=True)
class ProfilePlan:
    pending: list[PendingProfile]
    facts: list[UserFacts]
    num_unchanged: int


def build_label_index(embedder: Embedder, policy: ProfilePolicy) -> LabelIndex:
    """The spec's labels calibrated against fixed neutral passages (embedded once)."""
    background = embedder.embed_passages(list(BACKGROUND_PASSAGES))
    return LabelIndex(embedder, policy.labels, background=background)


def plan_profiles(
    tables: dict[str, pl.DataFrame],
    evidence_frame: pl.DataFrame,
    vectors_frame: pl.DataFrame,
    chunks_frame: pl.DataFrame,
    finished_keys: dict[str, frozenset[str]],
    llm_identity: str,
    prompt_version: str,
    spec: ProfileSpec,
    policy: ProfilePolicy,
    label_index: LabelIndex,
    answer_schema: str = "full",
) -> ProfilePlan:
    """Facts, evidence, candidates and the spec's rule verdict per user; users whose
    current input key is settled (`finished_input_keys`) are skipped."""
    if tables["users"].height == 0:
        return ProfilePlan([], [], 0)
    as_of = facts_as_of(tables["sales"], tables["behaviour"], tables["chat"])
    facts = facts_records(
        compute_user_facts(
            **tables, as_of=as_of, spending=spec.spending, recent_days=spec.facts.recent_days
        )
    )
    findings: dict[str, list[AnomalyFinding]] = {}
    for finding in detect_anomalies(
        spec.anomalies, tables["sales"], tables["behaviour"], tables["chat"], spec.business.currency
    ):
        findings.setdefault(finding.user_id, []).append(finding)
    chunks_of = chunks_frame.partition_by("user_id", as_dict=True) if chunks_frame.height else {}
    spec_hash = spec.part_hash("profiles")
    evidence = evidence_by_user(evidence_frame) if evidence_frame.height else {}
    vectors = vectors_frame["vector"].to_numpy() if vectors_frame.height else None
    by_chunk = (
        dict(zip(vectors_frame["chunk_id"].to_list(), vectors, strict=True))
        if (vectors is not None)
        else {}
    )
    pending = []
    for fact in facts:
        items = evidence.get(fact.user_id, [])
        mine = findings.get(fact.user_id, [])
        user_chunks = chunks_of.get((fact.user_id,))
        anomaly_chunks: dict[str, list[str]] = {}
        if user_chunks is not None:
            extra, anomaly_chunks = rule_evidence(
                fact.user_id, user_chunks, items, label_index, mine
            )
            items = [*items, *extra]
        candidates = user_candidates(label_index, items, by_chunk)
        level, reason = decide_intent(policy, fact, candidates)
        verdict = RuleVerdict(
            intent_level=level,
            intent_reason=reason,
            anomalies=tuple(
                AnomalyVerdict(f.anomaly, tuple(anomaly_chunks.get(f.anomaly, ())), f.detail)
                for f in mine
            ),
        )
        key = input_key(
            fact, items, candidates, llm_identity, prompt_version, verdict, spec_hash, answer_schema
        )
        if key not in finished_keys.get(fact.user_id, frozenset()):
            pending.append(PendingProfile(key, ProfileInput(fact, items, candidates, verdict)))
    return ProfilePlan(pending, facts, len(facts) - len(pending))


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
