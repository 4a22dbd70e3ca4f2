"""Which users get profiled, and with what: facts, evidence, label candidates and the spec's
rule verdict per user, and the input key that says whether any of it changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from profiling_assets.core.anomalies import AnomalyFinding, detect_anomalies
from profiling_assets.core.facts import compute_user_facts, facts_records
from profiling_assets.core.label_scoring import LabelIndex, keyword_hits, score_label_candidates
from profiling_assets.core.profiling.run import ProfileInput
from profiling_assets.core.records import EvidenceItem, LabelCandidate, UserFacts
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.core.spec_rules import (
    AnomalyVerdict,
    ProfilePolicy,
    RuleVerdict,
    decide_intent,
)

PROFILE_SCHEMA_VERSION = "s2"
# Evidence added by the spec's rules (a label named literally, an anomaly's rows) rather
# than retrieved for a question.
RULE_QUESTION_ID = "rule"


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
) -> list[LabelCandidate]:
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
    candidates: Sequence[LabelCandidate],
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


def _cohort_facts(tables: dict[str, pl.DataFrame], spec: ProfileSpec) -> list[UserFacts]:
    as_of = facts_as_of(tables["sales"], tables["behaviour"], tables["chat"])
    return facts_records(
        compute_user_facts(
            **tables, as_of=as_of, spending=spec.spending, recent_days=spec.facts.recent_days
        )
    )


def _findings_by_user(
    tables: dict[str, pl.DataFrame], spec: ProfileSpec
) -> dict[str, list[AnomalyFinding]]:
    findings: dict[str, list[AnomalyFinding]] = {}
    for finding in detect_anomalies(
        spec.anomalies, tables["sales"], tables["behaviour"], tables["chat"], spec.business.currency
    ):
        findings.setdefault(finding.user_id, []).append(finding)
    return findings


def _vectors_by_chunk(vectors_frame: pl.DataFrame) -> dict[str, np.ndarray]:
    if not vectors_frame.height:
        return {}
    vectors = vectors_frame["vector"].to_numpy()
    return dict(zip(vectors_frame["chunk_id"].to_list(), vectors, strict=True))


@dataclass(frozen=True)
class _CohortInputs:
    """What every user's input is drawn from, grouped by user."""

    evidence: dict[str, list[EvidenceItem]]
    chunks: dict[tuple[object, ...], pl.DataFrame]
    findings: dict[str, list[AnomalyFinding]]
    vectors_by_chunk: dict[str, np.ndarray]
    policy: ProfilePolicy
    label_index: LabelIndex


def _user_input(fact: UserFacts, cohort: _CohortInputs) -> ProfileInput:
    """One user's facts, evidence (retrieved + what the rules need), candidates and the
    spec's rule verdict."""
    items = cohort.evidence.get(fact.user_id, [])
    mine = cohort.findings.get(fact.user_id, [])
    user_chunks = cohort.chunks.get((fact.user_id,))
    anomaly_chunks: dict[str, list[str]] = {}
    if user_chunks is not None:
        extra, anomaly_chunks = rule_evidence(
            fact.user_id, user_chunks, items, cohort.label_index, mine
        )
        items = [*items, *extra]
    candidates = user_candidates(cohort.label_index, items, cohort.vectors_by_chunk)
    level, reason = decide_intent(cohort.policy, fact, candidates)
    verdict = RuleVerdict(
        intent_level=level,
        intent_reason=reason,
        anomalies=tuple(
            AnomalyVerdict(f.anomaly, tuple(anomaly_chunks.get(f.anomaly, ())), f.detail)
            for f in mine
        ),
    )
    return ProfileInput(fact, items, candidates, verdict)


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
    current input key is settled (`stored.finished_input_keys`) are skipped."""
    if tables["users"].height == 0:
        return ProfilePlan([], [], 0)
    facts = _cohort_facts(tables, spec)
    cohort = _CohortInputs(
        evidence=evidence_by_user(evidence_frame) if evidence_frame.height else {},
        chunks=chunks_frame.partition_by("user_id", as_dict=True) if chunks_frame.height else {},
        findings=_findings_by_user(tables, spec),
        vectors_by_chunk=_vectors_by_chunk(vectors_frame),
        policy=policy,
        label_index=label_index,
    )
    spec_hash = spec.part_hash("profiles")
    pending = []
    for fact in facts:
        item = _user_input(fact, cohort)
        key = input_key(
            fact,
            item.evidence,
            item.candidates,
            llm_identity,
            prompt_version,
            item.verdict,
            spec_hash,
            answer_schema,
        )
        if key not in finished_keys.get(fact.user_id, frozenset()):
            pending.append(PendingProfile(key, item))
    return ProfilePlan(pending, facts, len(facts) - len(pending))
