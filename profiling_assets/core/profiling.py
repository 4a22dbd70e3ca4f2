"""Profile one user (or many, bounded in parallel) with any `ProfileLLM`.

parse → `UserProfile` → citations ⊆ the user's evidence → no contradiction of computed
facts; on failure the reason goes back to the model as one more message, up to
`max_retries`. A user's bad answer never raises: it becomes a failed `ProfileOutcome`
with its reason. Where the facts alone decide (spending level, the probability band of an
intent level) a contradiction is repaired in code rather than retried. Where the model
leaves a field empty, candidates above a threshold and the computed facts fill it, marked
`basis="inferred"`; every repaired or filled field is named in `filled_fields`.

A backend built with `compact_schema` (PROFILING_LLM_SCHEMA; `auto` picks it for small
models such as the offline 270M one) answers only the narrative (`CompactProfile`, evidence
under short aliases); `expand_compact` makes it a complete `UserProfile` whose tags,
projects, concerns and spending level the fill step supplies.

A truncated answer (finish_reason "length") is never asked again as it was: first with
more answer room inside the model's context, then with the compact schema. Every failed
attempt has a `FailureKind`; the last one is the outcome's, and decides whether a later run
asks again (`core.profile_inputs.finished_input_keys`).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, get_args

from pydantic import ValidationError

from profiling_assets.core.profile_schema import (
    COMPACT_CONFIDENCE,
    COMPACT_FIELDS,
    FIELD_LABELS,
    LONG_TEXT,
    MAX_EVIDENCE,
    MAX_LIST_ITEMS,
    SHORT_TEXT,
    CompactProfile,
    LevelField,
    ListField,
    TextField,
    UserProfile,
    profile_json_schema,
)
from profiling_assets.core.prompts import (
    COMPACT_PROMPT_TOKENS,
    COMPACT_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    build_profile_messages,
    estimate_message_tokens,
    estimate_tokens,
    evidence_aliases,
    shown_chunk_ids,
)
from profiling_assets.core.records import EvidenceItem, SignalCandidate, UserFacts
from profiling_assets.core.spec_rules import (
    PURCHASE_CLAIMS,
    ProfilePolicy,
    RuleVerdict,
)
from profiling_assets.models.base import (
    FailureKind,
    LLMReply,
    ModelError,
    ProfileLLM,
    answer_limits,
    uses_compact_schema,
)

# Users handed to the pool ahead of the oldest one not yet returned, per slot: while one slow
# user (retries, a long answer) holds its slot, the other slots go on through up to this many
# users each; their outcomes wait, in order, behind it.
AHEAD_PER_SLOT = 4
# Room kept in the prompt budget for one retry's feedback (bad answer excerpt + reason).
RETRY_RESERVE_TOKENS = 240
_FEEDBACK_ANSWER_CHARS = 120
_FEEDBACK_REASON_CHARS = 200
# Kept free in the context when a truncated answer gets more room: chat-template tokens and
# the drift of a server's own token count against ours.
ANSWER_ROOM_MARGIN_TOKENS = 64
TRUNCATED_NOTE = "（输出被 max_tokens 截断）"

# Candidate scores are calibrated against the cohort background (core/signals.py): above 0
# means the label matches this user better than an ordinary chunk does.
CANDIDATE_THRESHOLD = 0.0
# Purchase-intent probability bands a level must sit in (looser than the prompt asks,
# so only clear inconsistencies fail).
INTENT_BANDS: dict[str, tuple[float, float]] = {
    "低": (0.0, 0.5),
    "中": (0.2, 0.85),
    "高": (0.5, 1.0),
}
# Where a probability outside its level's band is moved to: the prompt's own bands.
INTENT_REPAIR_BANDS: dict[str, tuple[float, float]] = {
    "低": (0.0, 0.3),
    "中": (0.4, 0.7),
    "高": (0.7, 1.0),
}
_CJK = re.compile(r"[\u4e00-\u9fff]")
_JUNK_VALUES = {"无", "未知", "暂无", "none", "null", "n/a", *FIELD_LABELS.values()}
# Instruction-like text inside user data (seed: user text is data, never instructions).
_INJECTION = re.compile(
    r"忽略(之前|以上|前面|上述)?(的)?(所有|全部)?(指令|提示|规则)|"
    r"(系统|system)\s*(提示|prompt)|你现在是|扮演|"
    r"ignore\s+(all\s+)?(previous|prior|above)\s+instructions",
    re.IGNORECASE,
)


class ProfileInput(NamedTuple):
    facts: UserFacts
    evidence: list[EvidenceItem]
    candidates: list[SignalCandidate]
    verdict: RuleVerdict = RuleVerdict()


@dataclass(frozen=True)
class ProfileOutcome:
    """A profile (with how it was obtained) or a failure with its reason."""

    user_id: str
    profile: UserProfile | None
    error: str | None = None
    attempts: int = 0
    attempt_errors: tuple[str, ...] = ()
    filled_fields: tuple[str, ...] = ()
    repaired_fields: tuple[str, ...] = ()
    novel_labels: tuple[str, ...] = ()
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those the server reused from its cache
    completion_tokens: int = 0
    latency_s: float = 0.0
    load_s: float = 0.0
    eval_s: float = 0.0
    prompt_tokens_estimate: int = 0
    failure_kind: FailureKind | None = None  # the last attempt's, for a failed outcome
    attempt_kinds: tuple[FailureKind, ...] = ()  # one per failed attempt

    @property
    def ok(self) -> bool:
        return self.profile is not None

    @property
    def transport_only(self) -> bool:
        """Failed without a single answer: every attempt hit the server, not the user."""
        return (
            not self.ok
            and bool(self.attempt_kinds)
            and all(k == "transport" for k in self.attempt_kinds)
        )


@dataclass
class _Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    load_s: float = 0.0
    eval_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    kinds: list[FailureKind] = field(default_factory=list)

    def add(self, reply: LLMReply) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.cached_tokens += reply.cached_tokens
        self.completion_tokens += reply.completion_tokens
        self.latency_s += reply.latency_s
        self.load_s += reply.load_s
        self.eval_s += reply.eval_s

    def fail(self, reason: str, kind: FailureKind) -> None:
        self.errors.append(reason)
        self.kinds.append(kind)


def candidate_confidence(score: float) -> float:
    """Map a calibrated candidate score (≈0 ordinary, ≈0.1 strong) onto 0.5–0.9."""
    return round(min(0.9, max(0.5, 0.5 + 4.0 * score)), 2)


def _spending_contradicts(level: str, facts: UserFacts) -> bool:
    return (level == "高" and (facts.total_spend <= 0 or facts.order_count == 0)) or (
        level == "低" and facts.spending_level == "高"
    )


def find_fact_contradictions(
    profile: UserProfile, facts: UserFacts, verdict: RuleVerdict | None = None
) -> list[str]:
    """Claims in the profile that the computed facts (and, given a `verdict`, the spec's
    rules) rule out, in Chinese for the retry."""
    problems: list[str] = []
    level = profile.spending_level.value
    if _spending_contradicts(level, facts):
        problems.append(
            f"消费能力为“{level}”，但累计消费 {facts.total_spend:.0f}、订单数 {facts.order_count}"
        )
    if verdict is not None and verdict.intent_level not in (None, profile.purchase_intent.value):
        problems.append(
            f"购买意向为“{profile.purchase_intent.value}”，但规则判定为“{verdict.intent_level}”"
            f"（{verdict.intent_reason}）"
        )
    if facts.order_count == 0:
        for name in FIELD_LABELS:
            value = getattr(profile, name).value
            texts = value if isinstance(value, list) else [value]
            claims = [t for t in texts if any(p in t for p in PURCHASE_CLAIMS)]
            if claims:
                problems.append(
                    f"{FIELD_LABELS[name]}声称用户已购买（“{claims[0]}”），但订单数为 0"
                )
    intent = profile.purchase_intent
    low, high = INTENT_BANDS[intent.value]
    if not low <= intent.probability <= high:
        problems.append(
            f"购买意向为“{intent.value}”，概率 {intent.probability:.2f} 不在 {low}–{high} 之间"
        )
    return problems


def repair_fact_contradictions(
    profile: UserProfile, facts: UserFacts, policy: ProfilePolicy, verdict: RuleVerdict
) -> tuple[UserProfile, list[str]]:
    """Correct, in code, what the facts and the spec's rules alone decide: a spending level
    the facts rule out becomes the facts' level (no citation: the facts are the basis); an
    intent level the rules decided replaces the model's; a probability outside its level's
    band is clamped into `INTENT_REPAIR_BANDS`; labels whose `requires` the facts rule out
    are dropped. Returns the profile and the repaired field names; what is left for
    `find_fact_contradictions` needs the model (e.g. a purchase claim in a sentence)."""
    updates: dict[str, object] = {}
    if _spending_contradicts(profile.spending_level.value, facts):
        updates["spending_level"] = LevelField(
            value=facts.spending_level, evidence=[], confidence=0.9, basis="inferred"
        )
    intent = profile.purchase_intent
    if verdict.intent_level is not None and verdict.intent_level != intent.value:
        intent = intent.model_copy(update={"value": verdict.intent_level, "basis": "inferred"})
        updates["purchase_intent"] = intent
    low, high = INTENT_BANDS[intent.value]
    if not low <= intent.probability <= high:
        lo, hi = INTENT_REPAIR_BANDS[intent.value]
        updates["purchase_intent"] = intent.model_copy(
            update={"probability": min(hi, max(lo, intent.probability)), "basis": "inferred"}
        )
    for name in ("tags", "intended_projects", "concerns"):
        fld = getattr(profile, name)
        kept = [v for v in fld.value if not policy.label_contradicts_facts(v, facts)]
        if len(kept) != len(fld.value):
            updates[name] = fld.model_copy(update={"value": kept})
    if not updates:
        return profile, []
    return profile.model_copy(update=updates), sorted(updates)


def apply_vocabulary(profile: UserProfile, policy: ProfilePolicy) -> tuple[UserProfile, list[str]]:
    """Label fields in the spec's words: aliases become label names; a closed vocabulary
    drops what it cannot name, an open one keeps it and reports it as novel."""
    updates: dict[str, object] = {}
    novel: list[str] = []
    for name in ("tags", "intended_projects", "concerns"):
        fld = getattr(profile, name)
        mapped = [policy.canonical(name, v) for v in fld.value]
        kept = list(dict.fromkeys(v for v in mapped if v is not None))
        novel += [v for v in kept if policy.is_novel(name, v)]
        if kept != fld.value:
            evidence = fld.evidence if kept else []
            updates[name] = fld.model_copy(update={"value": kept, "evidence": evidence})
    return (profile.model_copy(update=updates) if updates else profile), novel


def find_unknown_citations(profile: UserProfile, evidence_ids: set[str]) -> list[str]:
    return sorted(profile.cited_ids() - evidence_ids)


def parse_profile(text: str) -> UserProfile:
    """JSON text → `UserProfile`; raises ValueError / ValidationError with the reason."""
    stripped = text.strip()
    if stripped.startswith("```"):
        # Servers without a grammar sometimes wrap JSON in a fence.
        stripped = stripped.strip("`").removeprefix("json").strip()
    return UserProfile.model_validate(json.loads(stripped))


def parse_compact(text: str) -> CompactProfile:
    """JSON text → `CompactProfile`; raises ValueError / ValidationError with the reason."""
    return CompactProfile.model_validate(json.loads(text.strip()))


def expand_compact(
    compact: CompactProfile, aliases: dict[str, str], facts: UserFacts
) -> UserProfile:
    """A complete `UserProfile` from a compact answer: aliases back to chunk ids (an unknown
    alias stays as written, so the citation check names it), the narrative at
    `COMPACT_CONFIDENCE`, and placeholders (confidence 0, uncited; the facts' spending
    level) for the fields `fill_from_candidates` then takes from candidates, facts and
    injection detection."""
    fields: dict[str, object] = {}
    for name in COMPACT_FIELDS:
        part = getattr(compact, name)
        fields[name] = part.model_dump() | {
            "evidence": [aliases.get(e, e) for e in part.evidence],
            "confidence": COMPACT_CONFIDENCE if part.value else 0.0,
            "basis": "inferred",
        }
    for name in UserProfile.model_fields:
        if name not in fields:
            value = facts.spending_level if name == "spending_level" else []
            fields[name] = {"value": value, "evidence": [], "confidence": 0.0, "basis": "inferred"}
    return UserProfile.model_validate(fields)


# The words of the schema's field names (`recommendation`, `portrait` …, four letters or more):
# profile text is Chinese, so one of them in a value means the prompt is being copied.
_SCHEMA_WORDS = re.compile(
    "|".join(
        sorted({w for name in FIELD_LABELS for w in name.split("_") if len(w) >= 4}, key=len)[::-1]
    ),
    re.IGNORECASE,
)


def _is_junk(text: str) -> bool:
    """Nothing said: no Chinese, a placeholder, or the schema's own field names (a small
    model copying the prompt's field glossary, e.g. `行为画像，recommendation_reasons=…`)."""
    return (
        not _CJK.search(text)
        or text.strip().lower() in _JUNK_VALUES
        or bool(_SCHEMA_WORDS.search(text))
    )


def clean_profile(profile: UserProfile) -> UserProfile:
    """Drop what a small model writes when it has nothing to say: ids or field names as
    values, repeated items, text without a single Chinese character. Emptied fields lose
    their citations (no claim, nothing to cite) so the fill step can take them."""
    updates: dict[str, object] = {}
    for name in FIELD_LABELS:
        fld = getattr(profile, name)
        value = fld.value
        if isinstance(fld, ListField):
            value = list(dict.fromkeys(v.strip() for v in fld.value if not _is_junk(v)))
        elif isinstance(fld, TextField) and fld.value and _is_junk(fld.value):
            value = ""
        evidence = list(dict.fromkeys(fld.evidence)) if value else []
        if value != fld.value or evidence != fld.evidence:
            updates[name] = fld.model_copy(update={"value": value, "evidence": evidence})
    return profile.model_copy(update=updates) if updates else profile


INJECTION_ANOMALY = "发言含疑似指令注入"


def find_injection_chunks(evidence: list[EvidenceItem]) -> list[str]:
    """Chunk ids whose user text tries to instruct the model."""
    return list(dict.fromkeys(e.chunk_id for e in evidence if _INJECTION.search(e.text)))


def fill_from_candidates(
    profile: UserProfile,
    facts: UserFacts,
    candidates: list[SignalCandidate],
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
    present = {c.label for c in candidates}
    strong = sorted(
        (
            c
            for c in candidates
            if c.score >= threshold
            and c.chunk_id in evidence_ids
            and not policy.label_contradicts_facts(c.label, facts, present)
        ),
        key=lambda c: -c.score,
    )

    def from_field(target: str) -> ListField | None:
        picked = [c for c in strong if policy.field_of(c.kind) == target][:MAX_LIST_ITEMS]
        if not picked:
            return None
        return ListField(
            value=list(dict.fromkeys(c.label[:SHORT_TEXT] for c in picked)),
            evidence=list(dict.fromkeys(c.chunk_id for c in picked))[:MAX_EVIDENCE],
            confidence=candidate_confidence(statistics.fmean(c.score for c in picked)),
            basis="inferred",
        )

    updates: dict[str, object] = {}
    for name in ("tags", "intended_projects", "concerns"):
        if not getattr(profile, name).value and (filled := from_field(name)) is not None:
            updates[name] = filled
    projects = (updates.get("intended_projects") or profile.intended_projects).value  # type: ignore[union-attr]
    concerns = (updates.get("concerns") or profile.concerns).value  # type: ignore[union-attr]
    top_ids = list(dict.fromkeys(c.chunk_id for c in strong))[:MAX_EVIDENCE]

    if not profile.spending_level.evidence and profile.spending_level.basis != "stated":
        # No citation: the level rests on nothing the model saw, so the facts decide it.
        level = facts.spending_level
        if level != profile.spending_level.value or profile.spending_level.confidence < 0.5:
            updates["spending_level"] = profile.spending_level.model_copy(
                update={"value": level, "confidence": 0.9, "basis": "inferred"}
            )
    if not profile.interest_summary.value and (projects or concerns):
        text = "关注" + "、".join([*projects, *concerns][:4])
        updates["interest_summary"] = TextField(
            value=text[:LONG_TEXT], evidence=top_ids, confidence=0.6, basis="inferred"
        )
    if not profile.portrait.value:
        who = "".join(
            part
            for part in (
                f"{facts.age}岁" if facts.age else "",
                facts.gender or "",
                f"，{facts.city}" if facts.city else "",
            )
        )
        text = (
            f"{who or '用户'}；累计消费{facts.total_spend:.0f}{policy.currency}"
            f"（{facts.order_count}单），"
            f"浏览{facts.browse_count}次，发言{facts.chat_count}次"
        )
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
    found = [(a.name, [c for c in a.chunk_ids if c in evidence_ids]) for a in verdict.anomalies]
    injected = find_injection_chunks(evidence)
    if injected and not any("指令" in a for a in profile.anomalies.value):
        found.append((INJECTION_ANOMALY, injected))
    missing = [(n, ids) for n, ids in found if n not in profile.anomalies.value]
    if missing:
        # Rule findings first: they rest on rows, not on a model's reading.
        names = [*(n for n, _ in missing), *profile.anomalies.value][:MAX_LIST_ITEMS]
        cited = [c for _, ids in missing for c in ids[:1]] + profile.anomalies.evidence
        updates["anomalies"] = ListField(
            value=list(dict.fromkeys(names)),
            evidence=list(dict.fromkeys(cited))[:MAX_EVIDENCE],
            confidence=0.9,
            basis="inferred",
        )
    if not updates:
        return profile, []
    return profile.model_copy(update=updates), sorted(updates)


class _Checked(NamedTuple):
    profile: UserProfile | None
    reason: str | None
    repaired: list[str]
    novel: Sequence[str] = ()
    kind: FailureKind = "bad_answer"


# Any 12 consecutive characters of a system prompt line in an answer means the model is
# repeating its instructions (often because user text asked it to): refuse, never store.
_LEAK_WINDOW = 12
_PROMPT_WINDOWS = {
    line[i : i + _LEAK_WINDOW]
    for prompt in (SYSTEM_PROMPT, COMPACT_SYSTEM_PROMPT)
    for line in prompt.splitlines()
    for i in range(0, max(0, len(line) - _LEAK_WINDOW) + 1)
    if len(line) >= _LEAK_WINDOW
}


def find_prompt_leaks(profile: UserProfile) -> list[str]:
    """Answer texts that repeat a stretch of the system prompt."""
    leaks = []
    for name in FIELD_LABELS:
        value = getattr(profile, name).value
        for text in value if isinstance(value, list) else [value]:
            windows = (text[i : i + _LEAK_WINDOW] for i in range(len(text) - _LEAK_WINDOW + 1))
            if any(w in _PROMPT_WINDOWS for w in windows):
                leaks.append(text)
    return leaks


def _check(
    text: str,
    item: ProfileInput,
    policy: ProfilePolicy,
    evidence_ids: set[str],
    aliases: dict[str, str] | None,
) -> _Checked:
    """Parse (a compact answer when `aliases` is given), clean, check citations, put the
    labels in the spec's vocabulary, repair what the facts and rules decide, and report
    any contradiction left."""
    facts = item.facts
    try:
        if aliases is None:
            profile = parse_profile(text)
        else:
            profile = expand_compact(parse_compact(text), aliases, facts)
    except json.JSONDecodeError as exc:
        return _Checked(None, f"输出不是合法 JSON：{exc.msg}（位置 {exc.pos}）", [])
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        reason = f"JSON 不符合模式：{loc} {first['msg']}（共 {exc.error_count()} 处）"
        return _Checked(None, reason, [])
    profile = clean_profile(profile)
    leaked = find_prompt_leaks(profile)
    if leaked:
        return _Checked(None, f"答案复述了系统提示：“{leaked[0][:20]}…”", [], kind="leak")
    unknown = find_unknown_citations(profile, evidence_ids)
    if unknown:
        return _Checked(None, f"引用了不存在的证据 id：{', '.join(unknown[:5])}", [])
    profile, novel = apply_vocabulary(profile, policy)
    profile, repaired = repair_fact_contradictions(profile, facts, policy, item.verdict)
    contradictions = find_fact_contradictions(profile, facts, item.verdict)
    if contradictions:
        return _Checked(None, "与计算事实矛盾：" + "；".join(contradictions), repaired, novel)
    return _Checked(profile, None, repaired, novel)


class FirstRequest(NamedTuple):
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    aliases: dict[str, str] | None  # compact answers cite E1, E2 … mapped back to chunk ids


def first_request(
    llm: ProfileLLM,
    item: ProfileInput,
    policy: ProfilePolicy,
    budget: int,
    compact: bool | None = None,
) -> FirstRequest:
    """The messages and schema of a user's first attempt (also the benchmark's bare call).

    Compact (the backend's `compact_schema`, or `compact` when given) gets the compact
    prompt and schema (see the module doc)."""
    facts, evidence, candidates, verdict = item
    compact = uses_compact_schema(llm) if compact is None else compact
    if compact:
        budget = min(budget, COMPACT_PROMPT_TOKENS)
    messages = build_profile_messages(
        facts, evidence, candidates, budget, compact=compact, policy=policy, verdict=verdict
    )
    shown = set(shown_chunk_ids(messages, evidence, compact=compact))
    # Only what the model was shown may be cited; the enum lets a grammar enforce it.
    if compact:
        aliases = {a: cid for a, cid in evidence_aliases(evidence).items() if cid in shown}
        return FirstRequest(messages, profile_json_schema(sorted(aliases), compact=True), aliases)
    evidence_ids = {e.chunk_id for e in evidence}
    citable = shown | {c.chunk_id for c in candidates if c.chunk_id in evidence_ids}
    vocabulary = dict(policy.vocabulary) if policy.closed else None
    return FirstRequest(messages, profile_json_schema(sorted(citable), vocabulary=vocabulary), None)


@dataclass(frozen=True)
class _Ask:
    """One request: the schema's clean first request, and how this one differs from it."""

    request: FirstRequest
    compact: bool
    feedback: tuple[dict[str, str], ...] = ()  # the bad answer and the reason, fed back
    max_tokens: int | None = None  # None: the backend's own
    grown: bool = False

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.request.messages, *self.feedback]


def more_answer_room(limit: int, context: int, prompt_tokens: int) -> int | None:
    """A larger answer limit that still fits the context with the prompt (at most double,
    so a model that runs on does not burn the whole context), or None when there is none."""
    if limit <= 0 or context <= 0:
        return None
    grown = min(2 * limit, context - prompt_tokens - ANSWER_ROOM_MARGIN_TOKENS)
    return grown if grown > limit else None


def _after_truncation(
    ask: _Ask, reply: LLMReply, llm: ProfileLLM, item: ProfileInput, policy: ProfilePolicy,
    budget: int,
) -> _Ask | None:  # fmt: skip
    """The next request after a truncated answer, never the same one again: more answer room
    inside the context first, then the compact schema; None when both were tried."""
    default_limit, context = answer_limits(llm)
    if not ask.grown:
        prompt_tokens = reply.prompt_tokens or estimate_message_tokens(ask.messages)
        room = more_answer_room(ask.max_tokens or default_limit, context, prompt_tokens)
        if room is not None:
            return replace(ask, max_tokens=room, grown=True)
    if not ask.compact:
        compact = first_request(llm, item, policy, budget, compact=True)
        return _Ask(compact, compact=True, max_tokens=ask.max_tokens, grown=True)
    return None


def profile_user(
    llm: ProfileLLM,
    item: ProfileInput,
    policy: ProfilePolicy,
    *,
    token_budget: int,
    max_retries: int = 2,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> ProfileOutcome:
    """Profile one user; never raises for a bad answer or a transport error."""
    facts, evidence, candidates, verdict = item
    reserve = RETRY_RESERVE_TOKENS if max_retries > 0 else 0
    budget = token_budget - reserve
    first = first_request(llm, item, policy, budget)
    ask = _Ask(first, compact=uses_compact_schema(llm))
    evidence_ids = {e.chunk_id for e in evidence}
    usage = _Usage()
    attempts = 0
    for attempt in range(max_retries + 1):
        attempts = attempt + 1
        try:
            # max_tokens only when changed, so a backend without the argument still works.
            extra = {} if ask.max_tokens is None else {"max_tokens": ask.max_tokens}
            reply = llm.generate(ask.messages, ask.request.schema, **extra)
        except ModelError as exc:
            usage.fail(f"模型调用失败：{exc}", exc.kind)
            if exc.kind == "refused":
                break  # the same request is declined again; settled (see base.FailureKind)
            if attempt < max_retries:
                sleep(backoff_s * 2**attempt)  # transport trouble: give the server room
            continue
        usage.add(reply)
        if reply.refusal or reply.finish_reason == "content_filter":
            usage.fail(f"模型拒绝回答：{(reply.refusal or reply.finish_reason)[:200]}", "refused")
            break
        checked = _check(reply.text, item, policy, evidence_ids, ask.request.aliases)
        if checked.profile is not None:
            filled_profile, filled = fill_from_candidates(
                checked.profile, facts, candidates, evidence, policy, verdict, candidate_threshold
            )
            return _outcome(
                facts, first.messages, usage, attempts, filled_profile, filled, checked.repaired,
                checked.novel,
            )  # fmt: skip
        assert checked.reason is not None
        if reply.finish_reason == "length":
            usage.fail(checked.reason + TRUNCATED_NOTE, "truncated")
            following = _after_truncation(ask, reply, llm, item, policy, budget)
            if following is None:
                break  # more room and the compact schema were both tried
            ask = following
            continue
        reason = checked.reason
        usage.fail(reason, checked.kind)
        # Feedback in a user turn after the bad answer: chat templates (Gemma) require
        # alternating roles, and the excerpt keeps the retry inside the reserve.
        feedback = (
            {"role": "assistant", "content": reply.text[:_FEEDBACK_ANSWER_CHARS]},
            {
                "role": "user",
                "content": f"上一次输出有问题：{reason[:_FEEDBACK_REASON_CHARS]}。"
                "请修正后重新输出完整 JSON。",
            },
        )
        ask = replace(ask, feedback=feedback)
    return _outcome(facts, first.messages, usage, attempts, None, [], [], [])


def _outcome(
    facts: UserFacts,
    base: list[dict[str, str]],
    usage: _Usage,
    attempts: int,
    profile: UserProfile | None,
    filled: list[str],
    repaired: list[str],
    novel: Sequence[str],
) -> ProfileOutcome:
    failed = profile is None
    return ProfileOutcome(
        user_id=facts.user_id,
        profile=profile,
        error=usage.errors[-1] if failed else None,
        attempts=attempts,
        attempt_errors=tuple(usage.errors),
        # Repaired fields count as filled: their stored value is code's, not the model's.
        filled_fields=tuple(sorted({*filled, *repaired})),
        repaired_fields=tuple(repaired),
        novel_labels=tuple(novel),
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        latency_s=usage.latency_s,
        load_s=usage.load_s,
        eval_s=usage.eval_s,
        prompt_tokens_estimate=sum(estimate_tokens(m["content"]) for m in base),
        failure_kind=usage.kinds[-1] if failed else None,
        attempt_kinds=tuple(usage.kinds),
    )


class ProfileStream:
    """Outcomes in the order of the items, with `parallel` users being asked at all times (a
    server with that many slots stays busy: no batch waits for its slowest user).

    At most `AHEAD_PER_SLOT` × `parallel` users are handed out ahead of the one the caller
    waits for, so a slow user holds back a bounded number of finished outcomes. `close()`
    (the caller stopped at an outage) cancels the users not yet started and waits for those
    in flight; `finished()` then gives what was answered meanwhile, in order, so nothing
    answered is thrown away."""

    def __init__(
        self, one: Callable[[ProfileInput], ProfileOutcome], items: Iterable[ProfileInput],
        parallel: int,
    ) -> None:  # fmt: skip
        slots = max(1, parallel)
        self._one = one
        self._queue = iter(items)
        self._window = AHEAD_PER_SLOT * slots
        self._pool = ThreadPoolExecutor(max_workers=slots)
        self._pending: deque[Future[ProfileOutcome]] = deque()
        self._closed = False
        self._fill()

    def _fill(self) -> None:
        while not self._closed and len(self._pending) < self._window:
            item = next(self._queue, None)
            if item is None:
                return
            self._pending.append(self._pool.submit(self._one, item))

    def __iter__(self) -> Iterator[ProfileOutcome]:
        return self

    def __next__(self) -> ProfileOutcome:
        if not self._pending:
            self.close()
            raise StopIteration
        try:
            outcome = self._pending.popleft().result()
        except StopIteration as exc:  # from the worker: it must not read as the end here
            raise RuntimeError("profiling a user raised StopIteration") from exc
        self._fill()
        return outcome

    def close(self) -> None:
        """Ask nobody new; wait for the requests in flight."""
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def finished(self) -> list[ProfileOutcome]:
        """After `close()`: the outcomes answered past the last one taken, in order, up to
        the first user that was never asked."""
        done = []
        while self._pending and not self._pending[0].cancelled():
            done.append(self._pending.popleft().result())
        return done


def iter_profiles(
    llm: ProfileLLM,
    items: Iterable[ProfileInput],
    policy: ProfilePolicy,
    parallel: int,
    *,
    token_budget: int,
    max_retries: int = 2,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
    backoff_s: float = 0.5,
) -> ProfileStream:
    """`profile_user` over `items` as a `ProfileStream` with `parallel` requests in flight."""

    def one(item: ProfileInput) -> ProfileOutcome:
        return profile_user(
            llm,
            ProfileInput(*item),
            policy,
            token_budget=token_budget,
            max_retries=max_retries,
            candidate_threshold=candidate_threshold,
            backoff_s=backoff_s,
        )

    return ProfileStream(one, items, parallel)


def profile_users(
    llm: ProfileLLM,
    items: Sequence[ProfileInput],
    policy: ProfilePolicy,
    parallel: int,
    *,
    token_budget: int,
    max_retries: int = 2,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
    backoff_s: float = 0.5,
) -> list[ProfileOutcome]:
    """Profile many users with `parallel` requests in flight; order is kept."""
    stream = iter_profiles(
        llm,
        items,
        policy,
        parallel,
        token_budget=token_budget,
        max_retries=max_retries,
        candidate_threshold=candidate_threshold,
        backoff_s=backoff_s,
    )
    with closing(stream):
        return list(stream)


def server_outage(outcomes: Sequence[ProfileOutcome]) -> bool:
    """Every user of a batch failed and every attempt of each hit a transport error: the
    model server is gone, so asking the next users would only spend their timeouts."""
    return bool(outcomes) and all(o.transport_only for o in outcomes)


def summarize_outcomes(outcomes: Sequence[ProfileOutcome], wall_s: float) -> dict[str, float]:
    """Run figures for asset metadata (numbers, so the UI plots them)."""
    done = [o for o in outcomes if o.ok]
    kinds = Counter(o.failure_kind for o in outcomes if not o.ok)
    latencies = sorted(o.latency_s for o in outcomes if o.attempts)
    completion = sum(o.completion_tokens for o in outcomes)
    eval_s = sum(o.eval_s for o in outcomes)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    return {
        "num_users": len(outcomes),
        "num_profiles": len(done),
        "num_failed": len(outcomes) - len(done),
        "failure_rate": (len(outcomes) - len(done)) / len(outcomes) if outcomes else 0.0,
        "items_per_s": len(done) / wall_s if wall_s > 0 else 0.0,
        "prompt_tokens_per_user": (
            statistics.fmean(o.prompt_tokens for o in outcomes) if outcomes else 0.0
        ),
        # What the server evaluated, and what its prompt cache spared it (the shared prefix).
        "prompt_tokens_evaluated_per_user": (
            statistics.fmean(o.prompt_tokens - o.cached_tokens for o in outcomes)
            if outcomes
            else 0.0
        ),
        "prompt_tokens_cached_per_user": (
            statistics.fmean(o.cached_tokens for o in outcomes) if outcomes else 0.0
        ),
        "completion_tokens_per_user": (
            statistics.fmean(o.completion_tokens for o in outcomes) if outcomes else 0.0
        ),
        "tokens_per_s": completion / eval_s if eval_s > 0 else 0.0,
        "latency_p95_ms": p95 * 1000.0,
        "load_s": sum(o.load_s for o in outcomes),
        "num_retries": sum(max(0, o.attempts - 1) for o in outcomes),
        "num_repaired": sum(1 for o in outcomes if o.repaired_fields),
        **{f"num_failed_{kind}": kinds[kind] for kind in get_args(FailureKind)},
    }
