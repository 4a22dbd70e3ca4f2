"""From the model's answer text to a checked `UserProfile`, or the reason it is refused.

`check_answer`: parse (a compact answer is expanded with `expand_compact`) → clean what a
small model writes when it has nothing to say → refuse a repeated system prompt or a
citation outside the user's evidence → put labels in the spec's vocabulary → repair what
the facts decide (`fact_rules`) → report any contradiction left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import NamedTuple

from pydantic import ValidationError

from profiling_assets.core.profiling.fact_rules import (
    find_fact_contradictions,
    repair_fact_contradictions,
)
from profiling_assets.core.profiling.prompt import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT
from profiling_assets.core.profiling.schema import (
    COMPACT_CONFIDENCE,
    COMPACT_FIELDS,
    FIELD_LABELS,
    CompactProfile,
    ListField,
    TextField,
    UserProfile,
    field_values,
)
from profiling_assets.core.records import EvidenceItem, UserFacts
from profiling_assets.core.spec_rules import PROFILE_LIST_FIELDS, ProfilePolicy, RuleVerdict
from profiling_assets.core.text import has_cjk
from profiling_assets.models.base import FailureKind

_JUNK_VALUES = {"无", "未知", "暂无", "none", "null", "n/a", *FIELD_LABELS.values()}
# User text is data, never instructions: text in it that tries to instruct the model.
_INJECTION = re.compile(
    r"忽略(之前|以上|前面|上述)?(的)?(所有|全部)?(指令|提示|规则)|"
    r"(系统|system)\s*(提示|prompt)|你现在是|扮演|"
    r"ignore\s+(all\s+)?(previous|prior|above)\s+instructions",
    re.IGNORECASE,
)
INJECTION_ANOMALY = "发言含疑似指令注入"
# The words of the schema's field names (`recommendation`, `portrait` …, four letters or more):
# profile text is Chinese, so one of them in a value means the prompt is being copied.
_SCHEMA_WORDS = re.compile(
    "|".join(
        sorted({w for name in FIELD_LABELS for w in name.split("_") if len(w) >= 4}, key=len)[::-1]
    ),
    re.IGNORECASE,
)
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
    level) for the fields `filling.fill_from_candidates` then takes from candidates, facts
    and injection detection."""
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


def _is_junk(text: str) -> bool:
    """Nothing said: no Chinese, a placeholder, or the schema's own field names (a small
    model copying the prompt's field glossary, e.g. `行为画像，recommendation_reasons=…`)."""
    return (
        not has_cjk(text)
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


def find_prompt_leaks(profile: UserProfile) -> list[str]:
    """Answer texts that repeat a stretch of the system prompt."""
    leaks = []
    for name in FIELD_LABELS:
        for text in field_values(profile, name):
            windows = (text[i : i + _LEAK_WINDOW] for i in range(len(text) - _LEAK_WINDOW + 1))
            if any(w in _PROMPT_WINDOWS for w in windows):
                leaks.append(text)
    return leaks


def find_unknown_citations(profile: UserProfile, evidence_ids: set[str]) -> list[str]:
    return sorted(profile.cited_ids() - evidence_ids)


def find_injection_chunks(evidence: list[EvidenceItem]) -> list[str]:
    """Chunk ids whose user text tries to instruct the model."""
    return list(dict.fromkeys(e.chunk_id for e in evidence if _INJECTION.search(e.text)))


def apply_vocabulary(profile: UserProfile, policy: ProfilePolicy) -> tuple[UserProfile, list[str]]:
    """Label fields in the spec's words: aliases become label names; a closed vocabulary
    drops what it cannot name, an open one keeps it and reports it as novel."""
    updates: dict[str, object] = {}
    novel: list[str] = []
    for name in PROFILE_LIST_FIELDS:
        fld = getattr(profile, name)
        mapped = [policy.canonical(name, v) for v in fld.value]
        kept = list(dict.fromkeys(v for v in mapped if v is not None))
        novel += [v for v in kept if policy.is_novel(name, v)]
        if kept != fld.value:
            evidence = fld.evidence if kept else []
            updates[name] = fld.model_copy(update={"value": kept, "evidence": evidence})
    return (profile.model_copy(update=updates) if updates else profile), novel


class CheckedAnswer(NamedTuple):
    """A profile fit to fill and store, or the reason (and `FailureKind`) it is not."""

    profile: UserProfile | None
    reason: str | None
    repaired: list[str]
    novel: Sequence[str] = ()
    kind: FailureKind = "bad_answer"


def _parse(text: str, facts: UserFacts, aliases: dict[str, str] | None) -> UserProfile | str:
    """The answer as a `UserProfile` (a compact one when `aliases` is given), or why not."""
    try:
        if aliases is None:
            return parse_profile(text)
        return expand_compact(parse_compact(text), aliases, facts)
    except json.JSONDecodeError as exc:
        return f"输出不是合法 JSON：{exc.msg}（位置 {exc.pos}）"
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return f"JSON 不符合模式：{loc} {first['msg']}（共 {exc.error_count()} 处）"


def check_answer(
    text: str,
    facts: UserFacts,
    verdict: RuleVerdict,
    policy: ProfilePolicy,
    evidence_ids: set[str],
    aliases: dict[str, str] | None,
) -> CheckedAnswer:
    """Parse (a compact answer when `aliases` is given), clean, check citations, put the
    labels in the spec's vocabulary, repair what the facts and rules decide, and report
    any contradiction left."""
    parsed = _parse(text, facts, aliases)
    if isinstance(parsed, str):
        return CheckedAnswer(None, parsed, [])
    profile = clean_profile(parsed)
    leaked = find_prompt_leaks(profile)
    if leaked:
        return CheckedAnswer(None, f"答案复述了系统提示：“{leaked[0][:20]}…”", [], kind="leak")
    unknown = find_unknown_citations(profile, evidence_ids)
    if unknown:
        return CheckedAnswer(None, f"引用了不存在的证据 id：{', '.join(unknown[:5])}", [])
    profile, novel = apply_vocabulary(profile, policy)
    profile, repaired = repair_fact_contradictions(profile, facts, policy, verdict)
    contradictions = find_fact_contradictions(profile, facts, verdict, policy)
    if contradictions:
        return CheckedAnswer(None, "与计算事实矛盾：" + "；".join(contradictions), repaired, novel)
    return CheckedAnswer(profile, None, repaired, novel)
