"""Fill the fields a checked profile left empty from what code knows: label candidates above
a threshold, the computed facts and the spec's rule verdict. Every filled field is marked
`basis="inferred"` and cites only this user's evidence."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from profiling_assets.core.profiling.answer import INJECTION_ANOMALY, find_injection_chunks
from profiling_assets.core.profiling.schema import (
    LONG_TEXT,
    MAX_EVIDENCE,
    MAX_LIST_ITEMS,
    SHORT_TEXT,
    ListField,
    TextField,
    UserProfile,
)
from profiling_assets.core.records import EvidenceItem, LabelCandidate, UserFacts
from profiling_assets.core.spec_rules import PROFILE_LIST_FIELDS, ProfilePolicy, RuleVerdict

# Candidate scores are calibrated against neutral background passages (core/label_scoring.py):
# above 0 means the label matches this user better than an ordinary chunk does.
CANDIDATE_THRESHOLD = 0.0


def candidate_confidence(score: float) -> float:
    """Map a calibrated candidate score (≈0 ordinary, ≈0.1 strong) onto 0.5–0.9."""
    return round(min(0.9, max(0.5, 0.5 + 4.0 * score)), 2)


@dataclass(frozen=True)
class _Known:
    """What the fill draws on for one user."""

    profile: UserProfile
    facts: UserFacts
    strong: list[LabelCandidate]  # usable candidates, best first
    evidence_ids: set[str]
    policy: ProfilePolicy

    @property
    def top_ids(self) -> list[str]:
        """The chunks of the best candidates: what a sentence built from them cites."""
        return list(dict.fromkeys(c.chunk_id for c in self.strong))[:MAX_EVIDENCE]


def _strong_candidates(
    candidates: list[LabelCandidate],
    facts: UserFacts,
    evidence_ids: set[str],
    policy: ProfilePolicy,
    threshold: float,
) -> list[LabelCandidate]:
    """Candidates at or above `threshold`, citing this user's evidence, that the facts do
    not rule out; best first."""
    present = {c.label for c in candidates}
    return sorted(
        (
            c
            for c in candidates
            if c.score >= threshold
            and c.chunk_id in evidence_ids
            and not policy.label_contradicts_facts(c.label, facts, present)
        ),
        key=lambda c: -c.score,
    )


def _label_fields(known: _Known) -> dict[str, object]:
    """Empty label fields from the strongest candidates of their groups."""
    updates: dict[str, object] = {}
    for name in PROFILE_LIST_FIELDS:
        if getattr(known.profile, name).value:
            continue
        picked = [c for c in known.strong if known.policy.field_of(c.kind) == name]
        picked = picked[:MAX_LIST_ITEMS]
        if picked:
            updates[name] = ListField(
                value=list(dict.fromkeys(c.label[:SHORT_TEXT] for c in picked)),
                evidence=list(dict.fromkeys(c.chunk_id for c in picked))[:MAX_EVIDENCE],
                confidence=candidate_confidence(statistics.fmean(c.score for c in picked)),
                basis="inferred",
            )
    return updates


def _spending_level(known: _Known) -> dict[str, object]:
    """An uncited level rests on nothing the model saw, so the facts decide it."""
    level = known.profile.spending_level
    if level.evidence or level.basis == "stated":
        return {}
    if level.value == known.facts.spending_level and level.confidence >= 0.5:
        return {}
    update = {"value": known.facts.spending_level, "confidence": 0.9, "basis": "inferred"}
    return {"spending_level": level.model_copy(update=update)}


def _portrait_text(facts: UserFacts, currency: str) -> str:
    who = "".join(
        part
        for part in (
            f"{facts.age}岁" if facts.age else "",
            facts.gender or "",
            f"，{facts.city}" if facts.city else "",
        )
    )
    return (
        f"{who or '用户'}；累计消费{facts.total_spend:.0f}{currency}"
        f"（{facts.order_count}单），"
        f"浏览{facts.browse_count}次，发言{facts.chat_count}次"
    )


def _narrative_fields(known: _Known, projects: list[str], concerns: list[str]) -> dict[str, object]:
    """Empty narrative fields from the (filled) projects and concerns and the facts."""
    profile, top_ids = known.profile, known.top_ids
    updates: dict[str, object] = {}
    if not profile.interest_summary.value and (projects or concerns):
        text = "关注" + "、".join([*projects, *concerns][:4])
        updates["interest_summary"] = TextField(
            value=text[:LONG_TEXT], evidence=top_ids, confidence=0.6, basis="inferred"
        )
    if not profile.portrait.value:
        text = _portrait_text(known.facts, known.policy.currency)
        updates["portrait"] = TextField(
            value=text[:LONG_TEXT], evidence=top_ids[:1], confidence=0.9, basis="inferred"
        )
    if not profile.recommendation_reasons.value and projects:
        updates["recommendation_reasons"] = ListField(
            value=[f"意向{p}"[:SHORT_TEXT] for p in projects[:MAX_EVIDENCE]],
            evidence=top_ids,
            confidence=0.5,
            basis="inferred",
        )
    if not profile.next_action.value and projects:
        text = f"介绍{projects[0]}的方案与案例" + (f"，解答{concerns[0]}顾虑" if concerns else "")
        updates["next_action"] = TextField(
            value=text[:LONG_TEXT], evidence=top_ids[:2], confidence=0.5, basis="inferred"
        )
    return updates


def _anomalies(
    profile: UserProfile, evidence: list[EvidenceItem], verdict: RuleVerdict, evidence_ids: set[str]
) -> dict[str, object]:
    """The rules' anomalies and a detected instruction injection the model did not name,
    rule findings first: they rest on rows, not on a model's reading."""
    found = [(a.name, [c for c in a.chunk_ids if c in evidence_ids]) for a in verdict.anomalies]
    injected = find_injection_chunks(evidence)
    if injected and not any("指令" in a for a in profile.anomalies.value):
        found.append((INJECTION_ANOMALY, injected))
    missing = [(n, ids) for n, ids in found if n not in profile.anomalies.value]
    if not missing:
        return {}
    names = [*(n for n, _ in missing), *profile.anomalies.value][:MAX_LIST_ITEMS]
    cited = [c for _, ids in missing for c in ids[:1]] + profile.anomalies.evidence
    anomalies = ListField(
        value=list(dict.fromkeys(names)),
        evidence=list(dict.fromkeys(cited))[:MAX_EVIDENCE],
        confidence=0.9,
        basis="inferred",
    )
    return {"anomalies": anomalies}


def fill_from_candidates(
    profile: UserProfile,
    facts: UserFacts,
    candidates: list[LabelCandidate],
    evidence: list[EvidenceItem],
    policy: ProfilePolicy,
    verdict: RuleVerdict,
    threshold: float = CANDIDATE_THRESHOLD,
) -> tuple[UserProfile, list[str]]:
    """Fill fields the model left empty from candidates scoring ≥ `threshold`, the computed
    facts and the spec's rule verdict (anomalies with their chunks), all marked
    `basis="inferred"`. Returns the profile and the filled field names. Only this user's
    evidence ids are cited."""
    evidence_ids = {e.chunk_id for e in evidence}
    strong = _strong_candidates(candidates, facts, evidence_ids, policy, threshold)
    known = _Known(profile, facts, strong, evidence_ids, policy)
    updates = _label_fields(known)
    projects = (updates.get("intended_projects") or profile.intended_projects).value  # type: ignore[attr-defined]
    concerns = (updates.get("concerns") or profile.concerns).value  # type: ignore[attr-defined]
    updates |= _spending_level(known)
    updates |= _narrative_fields(known, projects, concerns)
    updates |= _anomalies(profile, evidence, verdict, evidence_ids)
    if not updates:
        return profile, []
    return profile.model_copy(update=updates), sorted(updates)
