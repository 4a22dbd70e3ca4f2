"""What the business spec decides about one profile, in the form the profile code needs.

`ProfilePolicy` is built once from a `ProfileSpec`: which label group fills which profile
field, the closed/open vocabulary (aliases mapped onto label names), the facts each label
requires, the purchase-intent rules and the anomaly names. `RuleVerdict` is what the rules
concluded for one user: an intent level with its reason, and anomalies with the chunks
that show them. The LLM may refine a verdict (a probability within the level's band, more
anomalies it can cite) but never contradict it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from profiling_assets.core.conditions import Condition
from profiling_assets.core.records import LabelCandidate, UserFacts
from profiling_assets.core.spec import ProfileSpec

PROFILE_LIST_FIELDS: tuple[str, ...] = ("tags", "intended_projects", "concerns")
# Phrases that claim the user already bought something: any label saying so needs an order.
PURCHASE_CLAIMS = ("已购", "购买过", "买过", "复购", "老客户", "已消费", "已做过")


@dataclass(frozen=True)
class ScoredLabel:
    """One spec label as the scorer sees it (`label_scoring.LabelLike`)."""

    kind: str
    name: str
    description: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class AnomalyVerdict:
    name: str
    chunk_ids: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class RuleVerdict:
    """What the spec's rules say about one user (part of the profile's input key)."""

    intent_level: str | None = None
    intent_reason: str = ""
    anomalies: tuple[AnomalyVerdict, ...] = ()

    def key(self) -> list[Any]:
        return [
            self.intent_level,
            self.intent_reason,
            [(a.name, list(a.chunk_ids), a.detail) for a in self.anomalies],
        ]


@dataclass(frozen=True)
class ProfilePolicy:
    business_line: str
    currency: str
    closed: bool
    field_of_kind: Mapping[str, str]
    vocabulary: Mapping[str, tuple[str, ...]]  # profile field → label names
    alias_of: Mapping[str, Mapping[str, str]]  # profile field → alias → label name
    requires: Mapping[str, Condition]
    intent_rules: tuple[tuple[str, Condition, str], ...]
    intent_default: str | None
    anomaly_names: tuple[str, ...]
    group_names: Mapping[str, str]  # group id → its Chinese name
    labels: tuple[ScoredLabel, ...] = field(default=())

    def field_of(self, kind: str) -> str | None:
        """The profile field a candidate of this kind fills (None: rules only)."""
        target = self.field_of_kind.get(kind)
        return target if target in PROFILE_LIST_FIELDS else None

    def canonical(self, profile_field: str, value: str) -> str | None:
        """A model's list item as a spec label name (aliases mapped); `None` when the
        closed vocabulary cannot name it. Open vocabulary keeps unknown values as written."""
        text = value.strip()
        names = self.vocabulary.get(profile_field, ())
        if text in names:
            return text
        mapped = self.alias_of.get(profile_field, {}).get(text)
        if mapped is not None:
            return mapped
        return None if self.closed else text

    def is_novel(self, profile_field: str, value: str) -> bool:
        return value not in self.vocabulary.get(profile_field, ())

    def label_contradicts_facts(
        self, name: str, facts: UserFacts, labels: Collection[str] = ()
    ) -> bool:
        """A label whose `requires` the facts rule out, or that claims a purchase the user
        never made."""
        condition = self.requires.get(name)
        if condition is not None and not condition.holds(facts_mapping(facts), labels):
            return True
        return facts.order_count == 0 and any(p in name for p in PURCHASE_CLAIMS)


def facts_mapping(facts: UserFacts) -> dict[str, Any]:
    return facts.model_dump()


def build_policy(spec: ProfileSpec) -> ProfilePolicy:
    vocabulary: dict[str, list[str]] = {f: [] for f in PROFILE_LIST_FIELDS}
    alias_of: dict[str, dict[str, str]] = {f: {} for f in PROFILE_LIST_FIELDS}
    requires: dict[str, Condition] = {}
    for group, label in spec.labels:
        target = group.profile_field
        if target in vocabulary:
            vocabulary[target].append(label.name)
            for alias in label.aliases:
                alias_of[target].setdefault(alias, label.name)
        if label.condition is not None:
            requires[label.name] = label.condition
    b = spec.business
    return ProfilePolicy(
        business_line=f"业务：{b.name}（{b.kind}）。{b.description}",
        currency=b.currency,
        closed=spec.vocabulary == "closed",
        field_of_kind={g.id: g.profile_field for g in spec.label_groups},
        vocabulary={k: tuple(v) for k, v in vocabulary.items()},
        alias_of=alias_of,
        requires=requires,
        intent_rules=tuple((r.level, r.condition, r.reason) for r in spec.intent.rules),
        intent_default=spec.intent.default,
        anomaly_names=spec.anomaly_names,
        group_names={g.id: g.name for g in spec.label_groups},
        labels=tuple(
            ScoredLabel(g.id, lb.name, lb.description, lb.keywords) for g, lb in spec.labels
        ),
    )


# A label counts for a rule (`label == X`) when the user names it literally (a keyword hit
# scores at least `label_scoring.KEYWORD_BOOST`) or when it is its group's best candidate with a
# clear calibrated score: rules decide levels, so a faint embedder lead is not enough.
RULE_LABEL_MIN_SCORE = 0.05


def rule_labels(candidates: Collection[LabelCandidate]) -> set[str]:
    """The labels rules may rely on (see `RULE_LABEL_MIN_SCORE`)."""
    best: dict[str, LabelCandidate] = {}
    for c in candidates:
        if c.kind not in best or c.score > best[c.kind].score:
            best[c.kind] = c
    return {c.label for c in best.values() if c.score >= RULE_LABEL_MIN_SCORE}


def decide_intent(
    policy: ProfilePolicy, facts: UserFacts, candidates: Collection[LabelCandidate]
) -> tuple[str | None, str]:
    """The first intent rule that holds (level, reason), else the spec's default."""
    labels = rule_labels(candidates)
    values = facts_mapping(facts)
    for level, condition, reason in policy.intent_rules:
        if condition.holds(values, labels):
            return level, reason
    if policy.intent_default is not None:
        return policy.intent_default, "没有规则成立，按规格默认等级"
    return None, ""
