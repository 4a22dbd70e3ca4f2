"""Where a profile contradicts what code computed about the user, and how code repairs it.

`FACT_RULES` is the one list: each rule names the field it judges, the contradiction (in
Chinese, for the retry message) and, where the facts and the spec's rules alone decide the
value, its repair. `find_fact_contradictions` and `repair_fact_contradictions` both walk it.

`INTENT_BANDS` is the one table of purchase-intent probability bands: the prompt states it
(`intent_band_text`), the check allows `BAND_TOLERANCE` beyond a band's edges (only a clear
inconsistency is a contradiction), and the repair moves a probability into its band.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from profiling_assets.core.profiling.schema import (
    FIELD_LABELS,
    Level,
    LevelField,
    UserProfile,
    field_values,
)
from profiling_assets.core.records import UserFacts
from profiling_assets.core.spec_rules import (
    PROFILE_LIST_FIELDS,
    PURCHASE_CLAIMS,
    ProfilePolicy,
    RuleVerdict,
)

# How far beyond its band's edges a probability may sit before the check calls it a
# contradiction: a model's 0.38 for 低 is a judgement call, its 0.9 is not.
BAND_TOLERANCE = 0.15
# Probabilities are stated to two decimals: an open upper edge is repaired to one step below.
_PROBABILITY_STEP = 0.01


class IntentBand(NamedTuple):
    """The probabilities of one intent level: from `low` up to, not including, `high` (the
    top band includes 1)."""

    level: Level
    low: float
    high: float

    @property
    def top(self) -> float:
        """The highest probability inside the band."""
        return self.high if self.high >= 1.0 else round(self.high - _PROBABILITY_STEP, 2)

    def allows(self, probability: float) -> bool:
        """Inside the band or within `BAND_TOLERANCE` of it."""
        low, high = self.allowed_range
        return low <= probability <= high

    @property
    def allowed_range(self) -> tuple[float, float]:
        return (
            max(0.0, round(self.low - BAND_TOLERANCE, 2)),
            min(1.0, round(self.high + BAND_TOLERANCE, 2)),
        )

    def nearest(self, probability: float) -> float:
        """The probability moved into the band (unchanged when inside it)."""
        return min(self.top, max(self.low, probability))


INTENT_BANDS: tuple[IntentBand, ...] = (
    IntentBand("低", 0.0, 0.35),
    IntentBand("中", 0.35, 0.7),
    IntentBand("高", 0.7, 1.0),
)
BAND_OF: dict[str, IntentBand] = {band.level: band for band in INTENT_BANDS}


def intent_band_text() -> str:
    """The bands as the prompt states them, e.g. `低<0.35，中0.35–0.7，高≥0.7`."""
    first, *middle, last = INTENT_BANDS
    parts = [f"{first.level}<{first.high:g}"]
    parts += [f"{band.level}{band.low:g}–{band.high:g}" for band in middle]
    parts.append(f"{last.level}≥{last.low:g}")
    return "，".join(parts)


@dataclass(frozen=True)
class FactContext:
    """What a rule judges a profile against: the computed facts, and where known the spec's
    rule verdict and policy."""

    facts: UserFacts
    verdict: RuleVerdict | None = None
    policy: ProfilePolicy | None = None


class FactRule(NamedTuple):
    """One way a profile can contradict the facts. `repair` gives the corrected value of
    `field` (None: nothing to repair); a rule without `repair` needs the model."""

    field: str | None
    problems: Callable[[UserProfile, FactContext], list[str]]
    repair: Callable[[UserProfile, FactContext], object | None] | None = None


def _spending_contradicts(level: str, facts: UserFacts) -> bool:
    return (level == "高" and (facts.total_spend <= 0 or facts.order_count == 0)) or (
        level == "低" and facts.spending_level == "高"
    )


def _spending_problems(profile: UserProfile, ctx: FactContext) -> list[str]:
    level, facts = profile.spending_level.value, ctx.facts
    if not _spending_contradicts(level, facts):
        return []
    return [f"消费能力为“{level}”，但累计消费 {facts.total_spend:.0f}、订单数 {facts.order_count}"]


def _spending_repair(profile: UserProfile, ctx: FactContext) -> LevelField | None:
    """The facts' level, uncited: the facts are the basis."""
    if not _spending_contradicts(profile.spending_level.value, ctx.facts):
        return None
    return LevelField(value=ctx.facts.spending_level, evidence=[], confidence=0.9, basis="inferred")


def _ruled_intent(ctx: FactContext, level: str) -> str | None:
    """The intent level the spec's rules decided, when it differs from `level`."""
    ruled = ctx.verdict.intent_level if ctx.verdict is not None else None
    return ruled if ruled not in (None, level) else None


def _intent_level_problems(profile: UserProfile, ctx: FactContext) -> list[str]:
    level = profile.purchase_intent.value
    ruled = _ruled_intent(ctx, level)
    if ruled is None:
        return []
    assert ctx.verdict is not None
    return [f"购买意向为“{level}”，但规则判定为“{ruled}”（{ctx.verdict.intent_reason}）"]


def _intent_level_repair(profile: UserProfile, ctx: FactContext) -> object | None:
    intent = profile.purchase_intent
    ruled = _ruled_intent(ctx, intent.value)
    if ruled is None:
        return None
    return intent.model_copy(update={"value": ruled, "basis": "inferred"})


def _purchase_claim_problems(profile: UserProfile, ctx: FactContext) -> list[str]:
    if ctx.facts.order_count != 0:
        return []
    problems = []
    for name, label in FIELD_LABELS.items():
        claims = [t for t in field_values(profile, name) if any(p in t for p in PURCHASE_CLAIMS)]
        if claims:
            problems.append(f"{label}声称用户已购买（“{claims[0]}”），但订单数为 0")
    return problems


def _intent_band_problems(profile: UserProfile, ctx: FactContext) -> list[str]:
    intent = profile.purchase_intent
    band = BAND_OF[intent.value]
    if band.allows(intent.probability):
        return []
    low, high = band.allowed_range
    return [f"购买意向为“{intent.value}”，概率 {intent.probability:.2f} 不在 {low}–{high} 之间"]


def _intent_band_repair(profile: UserProfile, ctx: FactContext) -> object | None:
    intent = profile.purchase_intent
    band = BAND_OF[intent.value]
    if band.allows(intent.probability):
        return None
    return intent.model_copy(
        update={"probability": band.nearest(intent.probability), "basis": "inferred"}
    )


def _ruled_out_labels(profile: UserProfile, ctx: FactContext, name: str) -> list[str]:
    """Labels of `name` whose `requires` (or purchase claim) the facts rule out."""
    if ctx.policy is None:
        return []
    policy = ctx.policy
    return [v for v in getattr(profile, name).value if policy.label_contradicts_facts(v, ctx.facts)]


def _label_rule(name: str) -> FactRule:
    def problems(profile: UserProfile, ctx: FactContext) -> list[str]:
        return [
            f"{FIELD_LABELS[name]}“{label}”与计算事实不符"
            for label in _ruled_out_labels(profile, ctx, name)
        ]

    def repair(profile: UserProfile, ctx: FactContext) -> object | None:
        ruled_out = _ruled_out_labels(profile, ctx, name)
        if not ruled_out:
            return None
        field = getattr(profile, name)
        return field.model_copy(update={"value": [v for v in field.value if v not in ruled_out]})

    return FactRule(name, problems, repair)


# In the order the contradictions are reported and repaired (the intent level is settled
# before its probability is put in that level's band).
FACT_RULES: tuple[FactRule, ...] = (
    FactRule("spending_level", _spending_problems, _spending_repair),
    FactRule("purchase_intent", _intent_level_problems, _intent_level_repair),
    FactRule(None, _purchase_claim_problems),  # in any field; only the model can reword it
    FactRule("purchase_intent", _intent_band_problems, _intent_band_repair),
    *(_label_rule(name) for name in PROFILE_LIST_FIELDS),
)


def find_fact_contradictions(
    profile: UserProfile,
    facts: UserFacts,
    verdict: RuleVerdict | None = None,
    policy: ProfilePolicy | None = None,
) -> list[str]:
    """Claims in the profile that the computed facts (and, given a `verdict` and a `policy`,
    the spec's rules) rule out, in Chinese for the retry."""
    ctx = FactContext(facts, verdict, policy)
    return [problem for rule in FACT_RULES for problem in rule.problems(profile, ctx)]


def repair_fact_contradictions(
    profile: UserProfile, facts: UserFacts, policy: ProfilePolicy, verdict: RuleVerdict
) -> tuple[UserProfile, list[str]]:
    """Correct, in code, each contradiction a rule of `FACT_RULES` can repair: a spending
    level the facts rule out becomes the facts' level; an intent level the rules decided
    replaces the model's; a probability outside its level's band (beyond the tolerance) is
    moved into the band; labels whose `requires` the facts rule out are dropped. Returns
    the profile and the repaired field names; what is left for `find_fact_contradictions`
    needs the model (e.g. a purchase claim in a sentence)."""
    ctx = FactContext(facts, verdict, policy)
    repaired: set[str] = set()
    for rule in FACT_RULES:
        fixed = rule.repair(profile, ctx) if rule.repair is not None else None
        if fixed is not None and rule.field is not None:
            profile = profile.model_copy(update={rule.field: fixed})
            repaired.add(rule.field)
    return profile, sorted(repaired)
