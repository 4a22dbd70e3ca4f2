"""When a batch of failures is an outage of the model server, not a batch of bad users; and
the purchase-intent bands and fact rules the check and the repair share."""

from __future__ import annotations

import itertools

import pytest

from profiling_assets.core.profiling.fact_rules import (
    BAND_OF,
    BAND_TOLERANCE,
    FACT_RULES,
    INTENT_BANDS,
    find_fact_contradictions,
    intent_band_text,
    repair_fact_contradictions,
)
from profiling_assets.core.profiling.outcome import ProfileOutcome, server_outage
from profiling_assets.core.profiling.prompt import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT
from profiling_assets.core.profiling.schema import UserProfile
from profiling_assets.core.spec_rules import RuleVerdict
from profiling_assets_tests.test_llm_profiles import POLICY, buyer, good_profile


def _failed(*kinds: str) -> ProfileOutcome:
    return ProfileOutcome("u", None, error="x", attempt_kinds=kinds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcomes", "outage"),
    [
        ([], False),
        ([_failed("transport", "transport"), _failed("transport")], True),
        # One user's answer arrived (bad or not): the server is up.
        ([_failed("transport"), _failed("transport", "bad_answer")], False),
        ([_failed("transport"), _failed("bad_answer")], False),
        ([_failed()], False),  # failed before any attempt: no evidence of an outage
    ],
)
def test_an_outage_is_every_attempt_of_every_user_a_transport_error(
    outcomes: list[ProfileOutcome], outage: bool
) -> None:
    assert server_outage(outcomes) is outage


def test_the_prompt_states_the_intent_bands_of_the_table() -> None:
    text = intent_band_text()
    assert text == "低<0.35，中0.35–0.7，高≥0.7"
    assert f"概率与等级一致：{text}）" in SYSTEM_PROMPT
    assert f"（等级+概率：{text}）" in COMPACT_SYSTEM_PROMPT


def test_intent_bands_cover_zero_to_one_without_overlap() -> None:
    assert INTENT_BANDS[0].low == 0.0 and INTENT_BANDS[-1].high == 1.0
    for lower, upper in itertools.pairwise(INTENT_BANDS):
        assert lower.low < lower.high == upper.low < upper.high
    for band in INTENT_BANDS:
        assert band.low <= band.top < band.high or band.top == band.high == 1.0


def _with_intent(level: str, probability: float) -> UserProfile:
    profile = good_profile()
    intent = profile.purchase_intent.model_copy(update={"value": level, "probability": probability})
    return profile.model_copy(update={"purchase_intent": intent})


@pytest.mark.parametrize(
    ("level", "probability", "repaired_to"),
    [
        ("低", 0.35 + BAND_TOLERANCE - 0.01, None),  # inside the tolerance: passes as it is
        ("中", 0.35 - BAND_TOLERANCE + 0.01, None),
        ("高", 0.7 - BAND_TOLERANCE + 0.01, None),
        ("低", 0.35 + BAND_TOLERANCE + 0.05, 0.34),  # beyond it: moved into its band
        ("中", 0.05, 0.35),
        ("中", 0.95, 0.69),
        ("高", 0.3, 0.7),
    ],
)
def test_a_probability_within_the_tolerance_passes_and_beyond_it_is_moved_into_its_band(
    level: str, probability: float, repaired_to: float | None
) -> None:
    profile, facts = _with_intent(level, probability), buyer().facts
    problems = find_fact_contradictions(profile, facts)
    fixed, names = repair_fact_contradictions(profile, facts, POLICY, RuleVerdict())
    if repaired_to is None:
        assert problems == [] and names == [] and fixed == profile
    else:
        assert any("不在" in p for p in problems), problems
        assert names == ["purchase_intent"]
        assert fixed.purchase_intent.probability == pytest.approx(repaired_to)
        assert BAND_OF[level].low <= fixed.purchase_intent.probability < BAND_OF[level].high
        assert find_fact_contradictions(fixed, facts) == []


def test_check_and_repair_walk_the_same_rules() -> None:
    """A label the facts rule out is a contradiction to the check (given the policy) and
    dropped by the repair: one rule, both sides."""
    profile = good_profile()
    tags = profile.tags.model_copy(update={"value": [*profile.tags.value, "老客户"]})
    profile = profile.model_copy(update={"tags": tags})
    facts = buyer().facts.model_copy(update={"order_count": 0, "total_spend": 0.0})
    with_policy = find_fact_contradictions(profile, facts, RuleVerdict(), POLICY)
    assert any("“老客户”与计算事实不符" in p for p in with_policy), with_policy
    fixed, names = repair_fact_contradictions(profile, facts, POLICY, RuleVerdict())
    assert "tags" in names and "老客户" not in fixed.tags.value
    assert {rule.field for rule in FACT_RULES if rule.repair is not None} >= set(names)
