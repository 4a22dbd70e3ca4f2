"""Deterministic sample source for any business spec: the same four tables and `truth` as
`synth.generate`, but every name, price, phrase and rule comes from a `ProfileSpec`.

Each user is drawn from a hidden persona (an intended project, a spending level, a purchase
intent, concerns, tags and now and then one anomaly) on its own random stream, so both
styles describe the very same people and buy the very same things. Purchases come from the
spec's catalogue and add up to a total inside the persona's spending level (with a margin
that the ~2% invalid rows cannot cross); tags are drawn only where their `requires` holds
on those purchases; the purchase intent always agrees with the spec's label rules.

The words come from the spec too: the `examples` of a label (style "standard"), sentences
built from its aliases and from fragments of its description (both styles, with different
templates), and browsing built from its aliases. A text planted for one label never
contains another label's name or alias, nor an anomaly keyword, and the unrelated noise
contains none at all, so the truth is what the data says and nothing more.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from profiling_assets.core.conditions import LABEL_FACT, Condition
from profiling_assets.core.contract import MAX_PLAUSIBLE_AMOUNT
from profiling_assets.core.spec import (
    LEVELS,
    AnomalyRule,
    CatalogueItem,
    Keywords,
    Label,
    LargeOrder,
    MessageBurst,
    ProfileListField,
    ProfileSpec,
    RefundThenLargeOrder,
)
from profiling_assets.synth.personas import CITIES, CITY_WEIGHTS
from profiling_assets.synth.phrases import STYLES, EventTemplate, Style, load_styled
from profiling_assets.synth.rows import (
    ACTIVITY_DAYS,
    Row,
    TableBuilder,
    check_size,
    draw_price,
    signup_date,
    truth_row,
    user_row,
)

ANOMALY_RATE = 0.05
NOISE_ORDER_RATE = 0.25
NO_ORDER_RATE = 0.3  # share of fixed-mode 低 spenders who never bought anything
MAX_FILL_ORDERS = 10
LEVEL_WEIGHTS = {"低": 35, "中": 45, "高": 20}
INTENT_WEIGHTS = {"低": 30, "中": 45, "高": 25}
# Orders the user cannot see as theirs to distinguish: extras at checkout, in no section.
NOISE_CATEGORY = "其他"
NOISE_ITEMS: tuple[tuple[str, float], ...] = (
    ("礼品包装", 19.0),
    ("会员年费", 99.0),
    ("帆布袋", 39.0),
    ("运费补差", 10.0),
)

# --- wording -----------------------------------------------------------------------------
_EXAMPLE_SHARE = 0.7  # standard style: a label's own examples, when it has any


_Texts = tuple[str, ...]
_Events = tuple[EventTemplate, ...]


@dataclass(frozen=True)
class _SpecWords:
    """The texts of `spec_wording.toml` in one style (what each is: the comments there)."""

    direct: dict[str, _Texts]
    clause_frames: _Texts
    indirect_share: dict[str, float]
    events: dict[str, _Events]
    noise_chat: _Texts
    noise_events: _Events
    neutral_intent: _Texts
    flood: _Texts
    refund: _Texts
    keyword: _Texts
    channels: _Texts
    channel_weights: tuple[float, ...]


@cache
def _spec_words(style: Style) -> _SpecWords:
    return load_styled(_SpecWords, Path(__file__).with_name("spec_wording.toml"), style)


_CLAUSE_SPLIT = re.compile(r"[，,；;。、！？!?]")


def _keywords_of(label: Label) -> tuple[str, ...]:
    """What a customer says when naming the label: its aliases, else its name."""
    return tuple(label.aliases) or (label.name,)


def _anomaly_keywords(rule: AnomalyRule) -> tuple[str, ...]:
    if isinstance(rule, RefundThenLargeOrder):
        return tuple(rule.refund_keywords)
    if isinstance(rule, Keywords):
        return tuple(rule.keywords)
    return ()


@dataclass(frozen=True)
class _Voice:
    """The ways one label is said in one style."""

    field: str
    indirect_share: float
    examples: tuple[str, ...]  # the spec's own utterances (style standard only)
    clauses: tuple[str, ...]  # description fragments: said without naming the label
    direct: tuple[str, ...]  # alias sentences
    events: tuple[EventTemplate, ...]

    def say(self, rng: random.Random) -> str:
        if self.examples and rng.random() < _EXAMPLE_SHARE:
            return rng.choice(self.examples)
        if self.clauses and (rng.random() < self.indirect_share or not self.direct):
            return rng.choice(self.clauses)
        return rng.choice(self.direct or self.examples)

    def short(self, rng: random.Random) -> str:
        """A plain statement of the label: an example (standard) or an alias sentence."""
        return rng.choice(self.examples or self.direct)


class _Wording:
    """Every text the generator can write for one spec and style, checked once: a text for
    one label names no other label and no anomaly keyword; noise names nothing at all."""

    def __init__(self, spec: ProfileSpec, style: Style) -> None:
        self.style = style
        self.text = text = _spec_words(style)
        forbidden = [k for _, lb in spec.labels for k in lb.keywords]
        forbidden += [k for rule in spec.anomalies for k in _anomaly_keywords(rule)]
        self._forbidden = tuple(dict.fromkeys(k.lower() for k in forbidden))
        self.voices = {lb.name: self._voice(g.profile_field, lb) for g, lb in spec.labels}
        self.noise_chat = self._clean(text.noise_chat) or ("[图片]",)
        self.noise_events = tuple(e for e in text.noise_events if self.allowed(e[1])) or (
            ("浏览页面", "首页"),
        )
        self.neutral_intent = self._clean(text.neutral_intent) or ("好的",)
        self.channels, self.channel_weights = text.channels, text.channel_weights

    def allowed(self, text: str, own: Iterable[str] = ()) -> bool:
        """Whether `text` names nothing but `own` (matching as the rules do: substrings,
        ASCII case-insensitive)."""
        rest = text.lower()
        for keyword in sorted((k.lower() for k in own), key=len, reverse=True):
            rest = rest.replace(keyword, "")
        return not any(k in rest for k in self._forbidden)

    def _clean(self, texts: Iterable[str], own: Iterable[str] = ()) -> tuple[str, ...]:
        own = tuple(own)
        return tuple(dict.fromkeys(t for t in texts if self.allowed(t, own)))

    def _voice(self, profile_field: ProfileListField, label: Label) -> _Voice:
        own = label.keywords
        keys = _keywords_of(label)
        fragments = [c.strip() for c in _CLAUSE_SPLIT.split(label.description)]
        fragments = [c for c in fragments if len(c) >= 4]
        frames = self.text.clause_frames
        examples = self._clean(label.examples, own) if self.style == "standard" else ()
        clauses = self._clean((f.format(c=c) for c in fragments for f in frames), own)
        # Fragments that do not name the label either are the truly indirect ones.
        unnamed = tuple(c for c in clauses if not self._names(c, own))
        clauses = unnamed or clauses
        templates = self.text.direct[profile_field]
        direct = self._clean((t.format(k=k) for t in templates for k in keys), own)
        events = tuple(
            (kind, target.format(k=k))
            for kind, target in self.text.events[profile_field]
            for k in keys
            if self.allowed(target.format(k=k), own)
        )
        if not (examples or direct or clauses):
            direct = (label.name,)
        shares = self.text.indirect_share
        share = shares.get(profile_field, shares["other"])
        return _Voice(profile_field, share, examples, clauses, direct or clauses, events)

    @staticmethod
    def _names(text: str, keywords: Iterable[str]) -> bool:
        folded = text.lower()
        return any(k.lower() in folded for k in keywords)

    def anomaly_texts(self, templates: Sequence[str], keyword: str) -> tuple[str, ...]:
        return self._clean((t.format(k=keyword) for t in templates), (keyword,)) or (keyword,)

    def flood(self, alias: str, own: Sequence[str]) -> tuple[str, ...]:
        return self._clean((t.format(a=alias) for t in self.text.flood), own) or ("在吗",)


# --- the spec, prepared for drawing --------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    name: str
    category: str
    low: float
    high: float
    label: str

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True)
class _Order:
    item: str
    category: str
    amount: float
    day: int  # days after signup
    signal: bool = True


@dataclass(frozen=True)
class SpecPersona:
    """What one synthetic user really is; the tables only hint at it."""

    user_id: str
    gender: str
    age: int
    city: str
    signup: date
    intended_project: str | None
    spending_level: str
    purchase_intent: str
    intent_labels: tuple[str, ...]  # signal labels planted so the intent rules agree
    concerns: tuple[str, ...]
    tags: tuple[str, ...]
    anomalies: tuple[str, ...]
    orders: tuple[_Order, ...]
    refund_gap: int = 0  # days from the refund message to the large order that follows it
    keep: frozenset[str] = frozenset()  # users columns a tag's `requires` reads: never blank


def _is_big_order(rule: AnomalyRule) -> bool:
    return isinstance(rule, RefundThenLargeOrder | LargeOrder)


def _positive_labels(condition: Condition) -> tuple[str, ...]:
    return tuple(str(c.value) for c in condition.clauses if c.name == LABEL_FACT and c.op == "==")


def _round_up(amount: float, step: float = 10.0) -> float:
    return float(math.ceil(amount / step) * step)


class _Plan:
    """Spec-derived constants for drawing personas."""

    def __init__(self, spec: ProfileSpec) -> None:
        self.spec = spec
        self.projects = [lb for g, lb in spec.labels if g.profile_field == "intended_projects"]
        self.concerns = [lb.name for g, lb in spec.labels if g.profile_field == "concerns"]
        self.tags = [lb for g, lb in spec.labels if g.profile_field == "tags"]
        self.signal_names = {lb.name for g, lb in spec.labels if g.profile_field == "signals"}
        self.categories = [c for s in spec.sales_sections for c in s.categories]
        self.items = self._catalogue()
        self.items_of = {
            p.name: [i for i in self.items if i.label == p.name] for p in self.projects
        }
        self.mid, self.high = self._thresholds()
        self.windows = self._windows()
        highs = sorted(i.high for i in self.items)
        self.baseline_high = statistics.median(highs)  # a generous guess at the median order
        self.cheapest = min(i.low for i in self.items)
        self.order_cap = self._order_cap()
        self.project_weights = self._project_weights()
        self.intent_rules = [
            (r.level, r.condition)
            for r in spec.intent.rules
            if r.condition.clauses and all(c.name == LABEL_FACT for c in r.condition.clauses)
        ]
        self.intent_levels = self._intent_levels()

    def _catalogue(self) -> list[_Item]:
        def item(c: CatalogueItem) -> _Item:
            return _Item(c.name, c.category, c.low, c.high, c.label)

        if self.spec.catalogue:
            return [item(c) for c in self.spec.catalogue]
        # No catalogue: one item per project, named after it, on a price ladder.
        base = self.spec.spending.mid or 1000.0
        names = [p.name for p in self.projects] or [f"{self.spec.business.kind}服务"]
        return [
            _Item(
                name,
                self.categories[i % len(self.categories)],
                base * 0.15 * (1 + i % 5),
                base * 0.4 * (1 + i % 5),
                name if self.projects else "",
            )
            for i, name in enumerate(names)
        ]

    def _thresholds(self) -> tuple[float, float]:
        s = self.spec.spending
        if s.mode == "fixed":
            assert s.mid is not None and s.high is not None
            return s.mid, s.high
        # Quantile mode: invented thresholds whose bands the personas fill in the shares
        # the spec's quantiles expect, so the batch quantiles fall between the bands.
        anchor = statistics.median(i.mid for i in self.items)
        return anchor * 2, anchor * 8

    def _windows(self) -> dict[str, tuple[float, float]]:
        mid, high = self.mid, self.high
        gap = (high - mid) / 4
        low_margin = min(max(200.0, 0.05 * mid), 0.25 * mid, gap)
        high_margin = min(max(200.0, 0.05 * high), gap)
        return {
            "低": (0.0, mid - low_margin),
            "中": (mid + low_margin, high - high_margin),
            "高": (high + high_margin, max(high * 2.5, high + 2 * high_margin)),
        }

    def _order_cap(self) -> float:
        """Ordinary orders stay well below what a large-order rule flags."""
        floors = [
            max(rule.min_amount, rule.ratio * min(self.cheapest, 100.0))
            for rule in self.spec.anomalies
            if isinstance(rule, LargeOrder) and rule.baseline == "cohort_median"
        ]
        return 0.8 * min(floors) if floors else math.inf

    def _project_weights(self) -> dict[str, list[float]]:
        """Dear projects for big spenders, cheap ones for small (unknown price: middling)."""
        prices = {}
        for project in self.projects:
            own = self.items_of[project.name]
            prices[project.name] = statistics.mean(i.mid for i in own) if own else None
        known = sorted(p for p in prices.values() if p is not None)
        ranks = {}
        for name, price in prices.items():
            if price is None or len(known) < 2:
                ranks[name] = 0.5
            else:
                ranks[name] = known.index(price) / (len(known) - 1)
        return {
            "低": [2.0 - 1.5 * ranks[p.name] for p in self.projects],
            "中": [1.0 for _ in self.projects],
            "高": [0.5 + 1.5 * ranks[p.name] for p in self.projects],
        }

    def _intent_levels(self) -> list[str]:
        plantable = {level for level, cond in self.intent_rules if self.plantable(cond)}
        default = self.spec.intent.default
        return [lv for lv in LEVELS if lv in plantable or default is None or lv == default]

    def plantable(self, condition: Condition) -> bool:
        labels = _positive_labels(condition)
        return bool(labels) and all(name in self.signal_names for name in labels)

    def level_weights(self) -> list[float]:
        s = self.spec.spending
        if s.mode == "quantile":
            assert s.mid_quantile is not None and s.high_quantile is not None
            return [s.mid_quantile, s.high_quantile - s.mid_quantile, 1 - s.high_quantile]
        return [LEVEL_WEIGHTS[lv] for lv in LEVELS]

    def level_of(self, total: float) -> str:
        return "高" if total >= self.high else "中" if total >= self.mid else "低"


class _AnomalyDeck:
    """Anomaly rules dealt like cards: every rule appears once per round, in random order,
    so even a few hundred users see every kind."""

    def __init__(self, rules: Sequence[AnomalyRule]) -> None:
        self.rules = list(rules)
        self.hand: list[AnomalyRule] = []

    def draw(self, rng: random.Random) -> AnomalyRule:
        if not self.hand:
            self.hand = rng.sample(self.rules, len(self.rules))
        return self.hand.pop()


# --- drawing personas --------------------------------------------------------------------
def _weighted_sample(
    rng: random.Random, names: Sequence[str], weights: Sequence[float], k: int
) -> list[str]:
    """k distinct names, heavier ones likelier (Efraimidis–Spirakis keys)."""
    keyed = sorted(
        ((rng.random() ** (1 / w), n) for n, w in zip(names, weights, strict=True)), reverse=True
    )
    return [n for _, n in keyed[:k]]


def _facts(orders: Sequence[_Order], plan: _Plan, level: str, persona: dict[str, Any]) -> dict:
    total = sum(o.amount for o in orders)
    count = len(orders)
    fixed = plan.spec.spending.mode == "fixed"
    return {
        "total_spend": total,
        "order_count": float(count),
        "monetary_avg": total / count if count else None,
        "spending_level": plan.level_of(total) if fixed else level,
        "gender": persona["gender"],
        "age": float(persona["age"]),
    }


def _fill(
    rng: random.Random,
    plan: _Plan,
    pool: Sequence[_Item],
    level: str,
    window: tuple[float, float],
    total: float,
) -> list[tuple[str, str, float]]:
    """Purchases that bring `total` into `window`, cheap items for small spenders."""
    lo, hi = window
    target = rng.uniform(max(lo, total), hi) if hi > max(lo, total) else lo
    exponent = {"低": -1.0, "中": 0.0, "高": 1.0}[level]
    bought: list[tuple[str, str, float]] = []
    while total < target and len(bought) < MAX_FILL_ORDERS:
        room = min(hi - total, plan.order_cap)
        fits = [i for i in pool if i.low <= room]
        if not fits:
            break
        item = rng.choices(fits, weights=[i.mid**exponent for i in fits])[0]
        amount = min(draw_price(rng, item.low, min(item.high, room)), float(math.floor(room)))
        if amount <= 0:
            break
        bought.append((item.name, item.category, amount))
        total += amount
    if total < lo:  # the loop could not get there: one last order sized to land inside
        need, room = lo - total, hi - total
        fits = [i for i in pool if i.low <= room and i.high >= need]
        if fits:
            item = rng.choice(fits)
            amount = float(math.ceil(rng.uniform(max(need, item.low), min(room, item.high))))
            name = item.name
        else:  # several of the dearest item
            item = max(pool, key=lambda i: i.high)
            amount = float(math.ceil(rng.uniform(need, min(room, need * 1.3))))
            count = max(1, math.ceil(amount / item.high))
            name = item.name if count == 1 else f"{item.name} ×{count}"
        bought.append((name, item.category, min(amount, float(math.floor(room)))))
    return bought


def _big_order(
    rng: random.Random, plan: _Plan, rule: AnomalyRule, others: Sequence[float]
) -> tuple[str, str, float]:
    """The order an anomaly rule needs: at least its minimum, far above its baseline."""
    dearest = max(plan.items, key=lambda i: i.high)
    if isinstance(rule, LargeOrder):
        if rule.baseline == "user_median":
            base = max(others, default=plan.baseline_high)
        else:
            base = plan.baseline_high
        floor = max(rule.min_amount, rule.ratio * base)
        amount = min(floor * rng.uniform(1.2, 2.0), MAX_PLAUSIBLE_AMOUNT * 0.8)
        amount = max(_round_up(amount, 100), _round_up(floor))
    else:
        assert isinstance(rule, RefundThenLargeOrder)
        top = rule.min_amount * 1.3
        if plan.order_cap > rule.min_amount:
            top = min(top, plan.order_cap)
        amount = _round_up(rng.uniform(rule.min_amount, max(top, rule.min_amount)))
    count = max(1, math.ceil(amount / dearest.high))
    name = dearest.name if count == 1 else f"{dearest.name} ×{count}"
    return name, dearest.category, amount


def _plan_orders(
    rng: random.Random,
    plan: _Plan,
    level: str,
    project: str | None,
    intent: str,
    anomaly: AnomalyRule | None,
) -> tuple[list[_Order], int]:
    """Every order of one user (signal and noise), and the refund gap if any."""
    window = plan.windows[level]
    fixed_mode = plan.spec.spending.mode == "fixed"
    orders: list[_Order] = []
    total = 0.0
    if rng.random() < NOISE_ORDER_RATE:
        name, price = rng.choice(NOISE_ITEMS)
        if total + price <= window[1]:
            day = rng.randint(0, ACTIVITY_DAYS)
            orders.append(_Order(name, NOISE_CATEGORY, price, day, signal=False))
            total += price
    if project and intent == "高" and rng.random() < 0.5:  # a deposit on what comes next
        own = plan.items_of.get(project) or []
        base = min((i.low for i in own), default=statistics.median(i.low for i in plan.items))
        deposit = max(10.0, _round_up(base * 0.1))
        if total + deposit <= window[1]:
            category = own[0].category if own else plan.categories[0]
            day = rng.randint(ACTIVITY_DAYS - 30, ACTIVITY_DAYS)
            orders.append(
                _Order(f"{own[0].name if own else project}（定金）", category, deposit, day)
            )
            total += deposit
    # Past purchases: anything but what the user wants next (that is still ahead).
    pool = [i for i in plan.items if not project or i.label != project] or plan.items
    skip = fixed_mode and level == "低" and rng.random() < NO_ORDER_RATE
    bought = [] if skip else _fill(rng, plan, pool, level, window, total)
    days = sorted(rng.randint(0, ACTIVITY_DAYS - 30) for _ in bought)
    orders += [_Order(n, c, a, d) for (n, c, a), d in zip(bought, days, strict=True)]
    gap = 0
    if anomaly is not None and _is_big_order(anomaly):
        if isinstance(anomaly, LargeOrder) and anomaly.baseline == "user_median":
            while sum(o.signal for o in orders) < 2:  # the rule needs other orders to compare
                item = rng.choice(pool)
                price = draw_price(rng, item.low, item.high)
                orders.append(_Order(item.name, item.category, price, rng.randint(0, 150)))
        others = [o.amount for o in orders]
        name, category, amount = _big_order(rng, plan, anomaly, others)
        if isinstance(anomaly, RefundThenLargeOrder):
            gap = rng.randint(1, min(anomaly.within_days - 1, 10)) if anomaly.within_days > 1 else 0
        day = rng.randint(gap, ACTIVITY_DAYS)
        orders.append(_Order(name, category, amount, day))
    return orders, gap


def _draw_intent(rng: random.Random, plan: _Plan) -> tuple[str, tuple[str, ...]]:
    """An intent level and the signal labels that make the spec's rules reach it."""
    levels = plan.intent_levels
    level = rng.choices(levels, weights=[INTENT_WEIGHTS[lv] for lv in levels])[0]
    rules = [c for lv, c in plan.intent_rules if lv == level and plan.plantable(c)]
    return level, (_positive_labels(rng.choice(rules)) if rules else ())


def _resolve_intent(plan: _Plan, wanted: str, labels: Sequence[str]) -> str:
    """What the spec's label rules say about a user with these labels (first rule wins)."""
    for level, condition in plan.intent_rules:
        if condition.holds({}, labels):
            return level
    return plan.spec.intent.default or wanted


def _draw_tags(
    rng: random.Random, plan: _Plan, facts: Sequence[dict[str, Any]]
) -> tuple[list[str], set[str]]:
    """2–3 tags whose `requires` holds on every view of the user's facts."""
    eligible = [
        t for t in plan.tags if t.condition is None or all(t.condition.holds(f) for f in facts)
    ]
    # A tag the facts earned (复购, 高消费 …) is likelier: the data shows it anyway.
    weights = [2.0 if t.condition is not None else 1.0 for t in eligible]
    names = _weighted_sample(rng, [t.name for t in eligible], weights, rng.randint(2, 3))
    keep = {
        c.name
        for t in eligible
        if t.name in names and t.condition is not None
        for c in t.condition.clauses
    }
    return [n for n in (t.name for t in plan.tags) if n in names], keep


def draw_spec_persona(
    rng: random.Random,
    plan: _Plan,
    deck: _AnomalyDeck,
    user_id: str,
    start: date,
    months: int,
) -> SpecPersona:
    anomaly = deck.draw(rng) if plan.spec.anomalies and rng.random() < ANOMALY_RATE else None
    if anomaly is not None and _is_big_order(anomaly):
        level = "高"  # a large order makes a big spender of anyone
    else:
        level = rng.choices(LEVELS, weights=plan.level_weights())[0]
    intent, intent_labels = _draw_intent(rng, plan)
    project = (
        rng.choices([p.name for p in plan.projects], weights=plan.project_weights[level])[0]
        if plan.projects
        else None
    )
    person = {
        "gender": rng.choices(("女", "男"), weights=(85, 15))[0],
        "age": min(58, max(18, round(rng.gauss(29, 7)))),
        "city": rng.choices(CITIES, weights=CITY_WEIGHTS)[0],
    }
    concerns = rng.sample(plan.concerns, min(len(plan.concerns), rng.randint(1, 3)))
    concerns = [c for c in plan.concerns if c in concerns]  # declaration order
    orders, gap = _plan_orders(rng, plan, level, project, intent, anomaly)
    # Tags must hold whether or not the pipeline keeps the noise orders (a conflicting
    # duplicate may take one away), so `requires` is checked on both views.
    views = [
        _facts(orders, plan, level, person),
        _facts([o for o in orders if o.signal], plan, level, person),
    ]
    tags, keep = _draw_tags(rng, plan, views)
    labels = [*([project] if project else []), *concerns, *tags, *intent_labels]
    intent = _resolve_intent(plan, intent, labels)
    if plan.spec.spending.mode == "fixed":
        level = plan.level_of(sum(o.amount for o in orders))
    return SpecPersona(
        user_id=user_id,
        gender=person["gender"],
        age=person["age"],
        city=person["city"],
        signup=signup_date(rng, start, months),
        intended_project=project,
        spending_level=level,
        purchase_intent=intent,
        intent_labels=intent_labels,
        concerns=tuple(concerns),
        tags=tuple(tags),
        anomalies=(anomaly.name,) if anomaly is not None else (),
        orders=tuple(orders),
        refund_gap=gap,
        keep=frozenset(keep),
    )


# --- planting rows -----------------------------------------------------------------------
@dataclass
class _User:
    persona: SpecPersona
    alias: str  # how this user calls the intended project
    own: tuple[str, ...]  # keywords the user's own texts may contain
    channel: str
    signals: list[str] = field(default_factory=list)


class _Builder(TableBuilder):
    def __init__(self, rng: random.Random, plan: _Plan, wording: _Wording) -> None:
        super().__init__(rng, wording.channels, wording.channel_weights)
        self.plan = plan
        self.words = wording

    # --- rows --------------------------------------------------------------------------
    def order(self, user: _User, order: _Order) -> str:
        day = user.persona.signup + timedelta(days=order.day)
        return self.add_order(
            user.persona.user_id, order.item, order.category, order.amount, day, not order.signal
        )

    def event(
        self, user: _User, template: EventTemplate, when: datetime, noise: bool = False
    ) -> str:
        return self.add_event(user.persona.user_id, *template, when, noise)

    def message(self, user: _User, text: str, when: datetime, noise: bool = False) -> str:
        return self.add_message(user.persona.user_id, text, when, user.channel, noise)

    def moment(self, user: _User, low: int = 0, high: int = ACTIVITY_DAYS) -> datetime:
        return self.moment_after(user.persona.signup, low, high)

    # --- signals -----------------------------------------------------------------------
    def say(self, user: _User, text: str, when: datetime | None = None) -> None:
        user.signals.append(self.message(user, text, when or self.moment(user)))

    def browse(self, user: _User, events: Sequence[EventTemplate]) -> None:
        if events:
            user.signals.append(self.event(user, self.rng.choice(events), self.moment(user)))

    def plant_user(self, persona: SpecPersona) -> list[str]:
        """Write one user's rows; return the ids of the rows that carry the persona's signals."""
        rng = self.rng
        project = self.plan.spec.label(persona.intended_project or "")
        own = project.keywords if project else ()
        user = _User(
            persona=persona,
            alias=rng.choice(_keywords_of(project)) if project else "这个",
            own=own,
            channel=self.draw_channel(),
        )
        for order in persona.orders:
            order_id = self.order(user, order)
            if order.signal:
                user.signals.append(order_id)
        if project:
            voice = self.words.voices[project.name]
            for _ in range(rng.randint(1, 3)):
                self.say(user, voice.say(rng))
            for _ in range(rng.randint(1, 3)):
                self.browse(user, voice.events)
        self._plant_labels(user, persona.concerns, event_share=0.3)
        self._plant_labels(user, persona.tags, event_share=0.3)
        self._plant_intent(user)
        for name in persona.anomalies:
            rule = next(r for r in self.plan.spec.anomalies if r.name == name)
            self._plant_anomaly(user, rule)
        self._plant_noise(user)
        return list(dict.fromkeys(user.signals))

    def _plant_labels(self, user: _User, names: Sequence[str], event_share: float) -> None:
        rng = self.rng
        for name in names:
            voice = self.words.voices[name]
            label = self.plan.spec.label(name)
            by_event = bool(voice.events) and rng.random() < event_share
            # A label the facts already show (复购, 高消费 …) is put in words only sometimes.
            shown_by_facts = label is not None and label.condition is not None
            if not by_event and (not shown_by_facts or rng.random() < 0.6):
                self.say(user, voice.say(rng))
            elif by_event and rng.random() < 0.2:
                self.say(user, voice.say(rng))
            if by_event:
                self.browse(user, voice.events)

    def _plant_intent(self, user: _User) -> None:
        rng = self.rng
        if user.persona.intent_labels:
            for name in user.persona.intent_labels:
                voice = self.words.voices[name]
                self.say(user, voice.short(rng), self.moment(user, ACTIVITY_DAYS // 2))
                if rng.random() < 0.3:
                    self.browse(user, voice.events)
        elif rng.random() < 0.8:
            self.say(user, rng.choice(self.words.neutral_intent))

    def _plant_anomaly(self, user: _User, rule: AnomalyRule) -> None:
        rng, words = self.rng, self.words
        if isinstance(rule, RefundThenLargeOrder):
            big = user.persona.orders[-1]
            day = user.persona.signup + timedelta(days=big.day - user.persona.refund_gap)
            when = datetime.combine(day, datetime.min.time()) + timedelta(
                hours=rng.randint(8, 11), minutes=rng.randrange(60)
            )
            texts = words.anomaly_texts(words.text.refund, rng.choice(rule.refund_keywords))
            self.say(user, rng.choice(texts), when)
        elif isinstance(rule, MessageBurst):
            count = rule.min_messages + 2
            span = rule.within_hours * 3600 * 0.8
            first = self.moment(user)
            offsets = sorted(rng.uniform(0, span) for _ in range(count - 1))
            texts = words.flood(user.alias, user.own)
            for offset in (0.0, *offsets):
                self.say(user, rng.choice(texts), first + timedelta(seconds=int(offset)))
        elif isinstance(rule, Keywords):
            keyword = rng.choice(rule.keywords)
            if "chat" in rule.tables:
                self.say(user, rng.choice(words.anomaly_texts(words.text.keyword, keyword)))
            else:
                self.browse(user, (("搜索", keyword),))
        # LargeOrder: the order itself, planted with the others.

    def _plant_noise(self, user: _User) -> None:
        """Unrelated chatter and browsing, now and then another project (a distraction)."""
        rng, words = self.rng, self.words
        for _ in range(rng.randint(0, 3)):
            self.message(user, rng.choice(words.noise_chat), self.moment(user), noise=True)
        for _ in range(rng.randint(1, 5)):
            self.event(user, rng.choice(words.noise_events), self.moment(user), noise=True)
        others = [p for p in self.plan.projects if p.name != user.persona.intended_project]
        for _ in range(rng.choice((0, 0, 1, 1, 2)) if others else 0):
            events = words.voices[rng.choice(others).name].events
            if events:
                self.event(user, rng.choice(events), self.moment(user), noise=True)


# --- public API --------------------------------------------------------------------------
def generate_tables_for_spec(
    spec: ProfileSpec,
    users: int,
    seed: int,
    months: int = 6,
    style: Style = "standard",
    start: date = date(2025, 1, 1),
) -> dict[str, pl.DataFrame]:
    """users, sales, behaviour, chat and truth for `spec`, identical for identical arguments."""
    check_size(users, months)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected 'standard' or 'alt'")
    plan = _Plan(spec)
    # Personas draw from their own stream so both styles describe the very same people.
    persona_rng = random.Random(f"{seed}:spec-personas")
    rng = random.Random(f"{seed}:spec-rows:{style}")
    wording = _Wording(spec, style)
    builder = _Builder(rng, plan, wording)
    deck = _AnomalyDeck(spec.anomalies)
    user_rows: list[Row] = []
    truth_rows: list[Row] = []
    for number in range(1, users + 1):
        persona = draw_spec_persona(persona_rng, plan, deck, f"U{number:06d}", start, months)
        # Optional columns a tag's `requires` reads are never left blank.
        user_rows.append(user_row(persona_rng, persona, persona.signup, persona.keep))
        truth_rows.append(truth_row(persona, builder.plant_user(persona)))
    replacements = (*wording.noise_chat, *(target for _, target in wording.noise_events))
    return builder.frames(
        user_rows, truth_rows, users, replacements, skip_empty=True, copy_broken=True
    )
