"""Deterministic sample source: users drawn from hidden personas, their orders, browsing and
chat carrying the persona's signals (mostly indirectly), unrelated noise, ~2% invalid rows,
and a `truth` table naming the persona and the ids of the rows that carry its signals.

Dates and timestamps of the event tables are written as ISO strings so that realistic
broken values ('2024/13/45') can exist at all; the pipeline parses them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from profiling_assets.core.contract import ALL_SOURCE_TABLES
from profiling_assets.core.spec import Spending, load_spec
from profiling_assets.synth import rows
from profiling_assets.synth.personas import (
    CATALOGUE,
    CATEGORY_AESTHETIC,
    CHEAP_ITEMS,
    MID_ITEMS,
    PREMIUM_ITEMS,
    Persona,
    draw_persona,
)
from profiling_assets.synth.phrases import EventTemplate, Phrasebook, Style, phrasebook
from profiling_assets.synth.rows import ACTIVITY_DAYS, SCHEMAS, TableBuilder, draw_price

# SCHEMAS lives in synth.rows, shared with synth.from_spec; it stays importable from here.
__all__ = ["SCHEMAS", "generate_tables", "write_source"]

HIGH_SPEND_FLOOR = 20_000  # a 高 spender's orders add up to at least this (元)

NOISE_CATEGORY = "护肤品"
ANOMALY_PACKAGES = ("全年抗衰套餐", "全脸综合定制套餐", "至尊会员年卡")
SURNAMES = ("张", "王", "李", "赵", "陈", "刘", "杨", "黄", "周", "吴", "徐", "孙")
GIVEN_NAMES = ("伟", "敏", "静", "磊", "婷", "军", "洁", "勇", "艳", "杰", "丽", "涛", "晨", "雪")


@dataclass
class _User:
    """What the planting functions share about one user."""

    persona: Persona
    signup: date
    alias: str
    doctor: str
    channel: str
    previous_alias: str = ""
    signals: list[str] = field(default_factory=list)


class _Builder(TableBuilder):
    def __init__(self, rng: random.Random, book: Phrasebook) -> None:
        super().__init__(rng, book.channels, book.channel_weights)
        self.book = book
        self.spent: dict[str, float] = {}  # what each user's orders add up to

    def add_order(
        self, user_id: str, item: str, category: str, amount: float, day: date, noise: bool
    ) -> str:
        self.spent[user_id] = self.spent.get(user_id, 0.0) + amount
        return super().add_order(user_id, item, category, amount, day, noise)

    # --- row constructors -------------------------------------------------------------
    def order(self, user: _User, item: str, category: str, amount: float, day: date) -> str:
        return self.add_order(user.persona.user_id, item, category, amount, day, noise=False)

    def noise_order(self, user: _User, day: date) -> None:
        item, amount = self.rng.choice(self.book.noise_items)
        self.add_order(user.persona.user_id, item, NOISE_CATEGORY, amount, day, noise=True)

    def event(
        self, user: _User, template: EventTemplate, when: datetime, noise: bool = False
    ) -> str:
        event_type, target = template
        target = target.format(a=user.alias, d=user.doctor)
        return self.add_event(user.persona.user_id, event_type, target, when, noise)

    def message(self, user: _User, template: str, when: datetime, noise: bool = False) -> str:
        text = template.format(a=user.alias, p=user.previous_alias or user.alias)
        return self.add_message(user.persona.user_id, text, when, user.channel, noise)

    # --- time ------------------------------------------------------------------------
    def day(self, user: _User, low: int = 0, high: int = ACTIVITY_DAYS) -> date:
        return user.signup + timedelta(days=self.rng.randint(low, high))

    def moment(self, user: _User, low: int = 0, high: int = ACTIVITY_DAYS) -> datetime:
        return self.moment_after(user.signup, low, high)


def _doctor(rng: random.Random, book: Phrasebook, project: str) -> str:
    name = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN_NAMES, k=rng.randint(1, 2)))
    return book.doctor_format.format(name=name, field=book.doctor_fields[project])


# --- planting: orders ------------------------------------------------------------------
def _history_items(rng: random.Random, persona: Persona) -> list[str]:
    """Past purchases consistent with the spending level; the intended project is still ahead."""
    others = [i for i in CATALOGUE if i != persona.intended_project]
    cheap = [i for i in CHEAP_ITEMS if i in others]
    low = persona.spending_level == "低"
    if low:
        items = rng.choices(cheap, k=rng.choice((0, 0, 1, 1, 2)))
    elif persona.spending_level == "中":
        items = [rng.choice([i for i in MID_ITEMS if i in others])]
        items += rng.choices(cheap, k=rng.randint(0, 3))
    else:
        items = [rng.choice([i for i in PREMIUM_ITEMS if i in others])]
        items += rng.choices(others, k=rng.randint(1, 4))
    # Returning customers come back for the cheap routine project; a 低 spender for the cheapest.
    routine = "皮肤管理" if low else rng.choice(CHEAP_ITEMS)
    if "复购客户" in persona.tags or "忠实客户" in persona.tags:
        items += [routine] * max(0, rng.randint(2, 3) - items.count(routine))
    if "忠实客户" in persona.tags and len(items) < 3:
        items += [routine] * (3 - len(items))
    return items


def _plant_orders(b: _Builder, user: _User) -> None:
    persona = user.persona
    items = _history_items(b.rng, persona)
    amounts = [draw_price(b.rng, CATALOGUE[i].low, CATALOGUE[i].high) for i in items]
    while persona.spending_level == "高" and sum(amounts) < HIGH_SPEND_FLOOR:
        extra = b.rng.choice(PREMIUM_ITEMS)
        items.append(extra)
        amounts.append(draw_price(b.rng, CATALOGUE[extra].low, CATALOGUE[extra].high))
    days = sorted(b.day(user, 0, ACTIVITY_DAYS - 30) for _ in items)
    for item, amount, day in zip(items, amounts, days, strict=True):
        user.signals.append(b.order(user, item, CATALOGUE[item].category, amount, day))
    if items:
        user.previous_alias = b.rng.choice(b.book.aliases[items[0]])
    if persona.purchase_intent == "高" and b.rng.random() < 0.5:
        project = CATALOGUE[persona.intended_project]
        deposit = float(b.rng.choice((200, 300, 500)))
        when = b.day(user, ACTIVITY_DAYS - 30)
        user.signals.append(
            b.order(user, f"{project.name}（定金）", project.category, deposit, when)
        )


# --- planting: chat and behaviour -------------------------------------------------------
def _say(builder: _Builder, user: _User, options: tuple[str, ...]) -> None:
    if not user.previous_alias:  # "上次做{p}…" only makes sense after a purchase
        options = tuple(o for o in options if "{p}" not in o) or options
    user.signals.append(builder.message(user, builder.rng.choice(options), builder.moment(user)))


def _browse(builder: _Builder, user: _User, options: tuple[EventTemplate, ...]) -> None:
    user.signals.append(builder.event(user, builder.rng.choice(options), builder.moment(user)))


def _plant_project(b: _Builder, user: _User) -> None:
    project = user.persona.intended_project
    specific = b.book.project_chat[project]
    for _ in range(b.rng.randint(1, 3)):
        options = specific if b.rng.random() < 0.65 else b.book.generic_project_chat
        _say(b, user, options)
    for _ in range(b.rng.randint(1, 3)):
        _browse(b, user, b.book.project_events)


def _plant_concerns(b: _Builder, user: _User) -> None:
    for concern in user.persona.concerns:
        events = b.book.concern_events.get(concern, ())
        by_event = bool(events) and b.rng.random() < 0.3
        if not by_event or b.rng.random() < 0.2:
            _say(b, user, b.book.concern_chat[concern])
        if by_event:
            _browse(b, user, events)


def _plant_tags(b: _Builder, user: _User) -> None:
    for tag in user.persona.tags:
        events = b.book.tag_events.get(tag, ())
        by_event = bool(events) and b.rng.random() < 0.3
        # 复购 / 忠实 / 高消费 already show in the orders; words add to them only sometimes.
        shown_by_orders = tag in ("复购客户", "忠实客户", "高消费")
        if not by_event and (not shown_by_orders or b.rng.random() < 0.6):
            _say(b, user, b.book.tag_chat[tag])
        if by_event:
            _browse(b, user, events)


def _plant_intent(b: _Builder, user: _User) -> None:
    level = user.persona.purchase_intent
    if b.rng.random() < {"低": 0.7, "中": 0.8, "高": 1.0}[level]:
        _say(b, user, b.book.intent_chat[level])
    events = b.book.intent_events[level]
    if events and b.rng.random() < 0.5:
        _browse(b, user, events)


def _plant_refund_then_big_order(b: _Builder, user: _User) -> None:
    first = b.rng.choice(MID_ITEMS)
    refunded_on = b.day(user, 0, ACTIVITY_DAYS - 30)
    item = CATALOGUE[first]
    user.signals.append(
        b.order(user, first, item.category, draw_price(b.rng, item.low, item.high), refunded_on)
    )
    asked = datetime.combine(
        refunded_on + timedelta(days=b.rng.randint(3, 10)), datetime.min.time()
    )
    asked += timedelta(hours=b.rng.randint(9, 21), minutes=b.rng.randrange(60))
    user.signals.append(b.message(user, b.rng.choice(b.book.refund_chat), asked))
    user.signals.append(
        b.event(user, b.rng.choice(b.book.refund_events), asked + timedelta(minutes=5))
    )
    big = CATALOGUE[b.rng.choice(("隆鼻", "热玛吉"))]  # the dearest projects, at their top price
    amount = draw_price(b.rng, big.high * 0.8, big.high)
    later = (asked + timedelta(days=b.rng.randint(1, 7))).date()
    user.signals.append(b.order(user, big.name, big.category, amount, later))


def _plant_message_flood(b: _Builder, user: _User) -> None:
    when = b.moment(user)
    for _ in range(b.rng.randint(8, 14)):
        when += timedelta(seconds=b.rng.randint(20, 300))
        user.signals.append(b.message(user, b.rng.choice(b.book.flood_chat), when))


def _plant_huge_order(b: _Builder, user: _User) -> None:
    amount = float(b.rng.randrange(80_000, 300_000, 1000))
    day = b.day(user)
    package = b.rng.choice(ANOMALY_PACKAGES)
    user.signals.append(b.order(user, package, CATEGORY_AESTHETIC, amount, day))


_ANOMALY_PLANTERS: dict[str, Callable[[_Builder, _User], None]] = {
    "退款后又大额下单": _plant_refund_then_big_order,
    "短时间内大量重复咨询": _plant_message_flood,
    "异常大额消费": _plant_huge_order,
}


def _plant_noise(b: _Builder, user: _User) -> None:
    """Unrelated chatter and browsing, and now and then another project (a distraction)."""
    for _ in range(b.rng.randint(0, 3)):
        b.message(user, b.rng.choice(b.book.noise_chat), b.moment(user), noise=True)
    for _ in range(b.rng.randint(1, 5)):
        b.event(user, b.rng.choice(b.book.noise_events), b.moment(user), noise=True)
    others = [p for p in CATALOGUE if p != user.persona.intended_project]
    for _ in range(b.rng.choice((0, 0, 1, 1, 2))):
        other = b.rng.choice(others)
        alias = b.rng.choice(b.book.aliases[other])
        distraction = _User(user.persona, user.signup, alias, _doctor(b.rng, b.book, other), "")
        template = b.rng.choice(b.book.project_events)
        b.event(distraction, template, b.moment(user), noise=True)
    if b.rng.random() < 0.25:
        b.noise_order(user, b.day(user))


def _plant_user(b: _Builder, persona: Persona, signup: date) -> list[str]:
    """Write one user's rows; return the ids of the rows that carry the persona's signals."""
    user = _User(
        persona=persona,
        signup=signup,
        alias=b.rng.choice(b.book.aliases[persona.intended_project]),
        doctor=_doctor(b.rng, b.book, persona.intended_project),
        channel=b.draw_channel(),
    )
    _plant_orders(b, user)
    _plant_project(b, user)
    _plant_concerns(b, user)
    _plant_tags(b, user)
    _plant_intent(b, user)
    for anomaly in persona.anomalies:
        _ANOMALY_PLANTERS[anomaly](b, user)
    _plant_noise(b, user)
    return list(dict.fromkeys(user.signals))


def _spending_level(total: float, spending: Spending) -> str:
    assert spending.high is not None and spending.mid is not None  # the clinic's are fixed
    if total > 0 and total >= spending.high:
        return "高"
    return "中" if total > 0 and total >= spending.mid else "低"


# --- public API ------------------------------------------------------------------------
def generate_tables(
    users: int,
    seed: int,
    start: date = date(2025, 1, 1),
    months: int = 6,
    style: Style = "standard",
) -> dict[str, pl.DataFrame]:
    """The four source tables plus `truth`, identical for identical arguments."""
    rows.check_size(users, months)
    # Personas draw from their own stream so both styles describe the very same people.
    persona_rng = random.Random(seed)
    rng = random.Random(f"{seed}:rows")
    builder = _Builder(rng, phrasebook(style))
    spending = load_spec("clinic").spending
    user_rows: list[rows.Row] = []
    truth_rows: list[rows.Row] = []
    for number in range(1, users + 1):
        persona = draw_persona(persona_rng, f"U{number:06d}")
        signup = rows.signup_date(persona_rng, start, months)
        user_rows.append(rows.user_row(persona_rng, persona, signup))
        signals = _plant_user(builder, persona, signup)
        # The truth's spending level is the business's rule (the clinic spec's thresholds)
        # applied to what was planted: the persona only decides what the user buys.
        level = _spending_level(builder.spent.get(persona.user_id, 0.0), spending)
        truth_rows.append(
            rows.truth_row(dataclasses.replace(persona, spending_level=level), signals)
        )
    book = builder.book
    replacements = (*book.noise_chat, *(target for _, target in book.noise_events))
    return builder.frames(user_rows, truth_rows, users, replacements)


def write_source(path: Path, tables: Mapping[str, pl.DataFrame]) -> dict[str, int]:
    """Replace the given tables in the DuckDB file at `path`; return the row count of each."""
    unknown = [name for name in tables if name not in ALL_SOURCE_TABLES]
    if unknown:
        raise ValueError(f"unknown source tables {unknown}; expected some of {ALL_SOURCE_TABLES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with duckdb.connect(str(path)) as con:
        con.begin()
        for name, frame in tables.items():
            con.register("incoming", frame.to_arrow())
            # `name` is one of the fixed table names checked above, never user text.
            con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM incoming')
            con.unregister("incoming")
            counts[name] = frame.height
        con.commit()
    return counts
