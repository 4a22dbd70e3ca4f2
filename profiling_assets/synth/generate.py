"""Deterministic sample source: users drawn from hidden personas, their orders, browsing and
chat carrying the persona's signals (mostly indirectly), unrelated noise, ~2% invalid rows,
and a `truth` table naming the persona and the ids of the rows that carry its signals.

Dates and timestamps of the event tables are written as ISO strings so that realistic
broken values ('2024/13/45') can exist at all; the pipeline parses them.
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from profiling_assets.core.contract import SOURCE_TABLES, TRUTH_TABLE
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

# Valid activity of a user falls within this many days after signup.
ACTIVITY_DAYS = 180
INVALID_RATE = (0.015, 0.025)  # share of invalid rows per event table, drawn per table
INVALID_USER_RATE = 0.005
HIGH_SPEND_FLOOR = 20_000  # a 高 spender's orders add up to at least this (元)

NOISE_CATEGORY = "护肤品"
ANOMALY_PACKAGES = ("全年抗衰套餐", "全脸综合定制套餐", "至尊会员年卡")
SURNAMES = ("张", "王", "李", "赵", "陈", "刘", "杨", "黄", "周", "吴", "徐", "孙")
GIVEN_NAMES = ("伟", "敏", "静", "磊", "婷", "军", "洁", "勇", "艳", "杰", "丽", "涛", "晨", "雪")

BAD_DATES = ("2024/13/45", "2025-02-30", "2025-13-01", "20250431", "昨天", "N/A")
BAD_TIMESTAMPS = (
    "2024/13/45 10:00",
    "2025-02-30 12:00:00",
    "2025-06-31 25:61:00",
    "昨天下午三点",
    "N/A",
    "1700000000abc",
)

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "users": {
        "user_id": pl.String(),
        "gender": pl.String(),
        "age": pl.Int64(),
        "city": pl.String(),
        "signup_date": pl.Date(),
        "cohort": pl.String(),
    },
    "sales": {
        "order_id": pl.String(),
        "user_id": pl.String(),
        "item": pl.String(),
        "category": pl.String(),
        "amount": pl.Float64(),
        "order_date": pl.String(),
    },
    "behaviour": {
        "event_id": pl.String(),
        "user_id": pl.String(),
        "event_type": pl.String(),
        "target": pl.String(),
        "event_time": pl.String(),
    },
    "chat": {
        "message_id": pl.String(),
        "user_id": pl.String(),
        "message": pl.String(),
        "sent_at": pl.String(),
        "channel": pl.String(),
    },
    TRUTH_TABLE: {
        "user_id": pl.String(),
        "intended_project": pl.String(),
        "spending_level": pl.String(),
        "purchase_intent": pl.String(),
        "concerns": pl.List(pl.String()),
        "tags": pl.List(pl.String()),
        "anomalies": pl.List(pl.String()),
        "signal_ids": pl.List(pl.String()),
    },
}

Row = list[Any]


@dataclass
class _Table:
    """Rows of one event table under construction; `noise` indexes rows that carry no signal."""

    prefix: str
    rows: list[Row] = field(default_factory=list)
    noise: list[int] = field(default_factory=list)
    next_id: int = 1

    def new_id(self) -> str:
        ident = f"{self.prefix}{self.next_id:08d}"
        self.next_id += 1
        return ident

    def add(self, row: Row, noise: bool) -> str:
        if noise:
            self.noise.append(len(self.rows))
        self.rows.append(row)
        return row[0]


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


class _Builder:
    def __init__(self, rng: random.Random, book: Phrasebook) -> None:
        self.rng = rng
        self.book = book
        self.sales = _Table("O")
        self.behaviour = _Table("E")
        self.chat = _Table("M")

    # --- row constructors -------------------------------------------------------------
    def order(self, user: _User, item: str, category: str, amount: float, day: date) -> str:
        row = [self.sales.new_id(), user.persona.user_id, item, category, amount, day.isoformat()]
        return self.sales.add(row, noise=False)

    def noise_order(self, user: _User, day: date) -> None:
        item, price = self.rng.choice(self.book.noise_items)
        row = [
            self.sales.new_id(),
            user.persona.user_id,
            item,
            NOISE_CATEGORY,
            price,
            day.isoformat(),
        ]
        self.sales.add(row, noise=True)

    def event(
        self, user: _User, template: EventTemplate, when: datetime, noise: bool = False
    ) -> str:
        event_type, target = template
        row = [
            self.behaviour.new_id(),
            user.persona.user_id,
            event_type,
            target.format(a=user.alias, d=user.doctor),
            _stamp(when),
        ]
        return self.behaviour.add(row, noise)

    def message(self, user: _User, template: str, when: datetime, noise: bool = False) -> str:
        text = template.format(a=user.alias, p=user.previous_alias or user.alias)
        channel = user.channel if self.rng.random() < 0.8 else self._channel()
        row = [self.chat.new_id(), user.persona.user_id, text, _stamp(when), channel]
        return self.chat.add(row, noise)

    def _channel(self) -> str | None:
        if self.rng.random() < 0.03:  # the optional column is sometimes simply not filled
            return None
        return self.rng.choices(self.book.channels, weights=self.book.channel_weights)[0]

    # --- time ------------------------------------------------------------------------
    def day(self, user: _User, low: int = 0, high: int = ACTIVITY_DAYS) -> date:
        return user.signup + timedelta(days=self.rng.randint(low, high))

    def moment(self, user: _User, low: int = 0, high: int = ACTIVITY_DAYS) -> datetime:
        hour = self.rng.choices(_HOURS, cum_weights=_HOUR_CUM_WEIGHTS)[0]
        offset = timedelta(
            days=self.rng.randint(low, high), hours=hour, seconds=self.rng.randrange(3600)
        )
        return datetime(user.signup.year, user.signup.month, user.signup.day) + offset


# People write to a clinic in the day and the evening, rarely at night.
_HOURS = tuple(range(24))
_HOUR_CUM_WEIGHTS = tuple(
    accumulate((1, 0.5, 0.3, 0.2, 0.2, 0.3, 1, 2, 4, 6, 7, 7, 6, 6, 6, 6, 6, 6, 6, 7, 8, 8, 6, 3))
)


def _stamp(when: datetime) -> str:
    return when.isoformat(sep=" ", timespec="seconds")


def _add_months(start: date, months: int) -> date:
    index = start.year * 12 + start.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _signup_date(rng: random.Random, start: date, months: int) -> date:
    """A day in one of the `months` calendar months from `start` (never before `start`)."""
    month = _add_months(date(start.year, start.month, 1), rng.randrange(months))
    first = max(month, start)
    last = date(month.year, month.month, calendar.monthrange(month.year, month.month)[1])
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _price(rng: random.Random, low: float, high: float) -> float:
    """A price as clinics write them: round hundreds when large, 398-style when small."""
    amount = rng.uniform(low, high)
    if amount >= 2000:
        return float(round(amount, -2))
    rounded = round(amount, -1)
    return float(rounded - 2 if rng.random() < 0.5 else rounded)


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
    amounts = [_price(b.rng, CATALOGUE[i].low, CATALOGUE[i].high) for i in items]
    while persona.spending_level == "高" and sum(amounts) < HIGH_SPEND_FLOOR:
        extra = b.rng.choice(PREMIUM_ITEMS)
        items.append(extra)
        amounts.append(_price(b.rng, CATALOGUE[extra].low, CATALOGUE[extra].high))
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
        b.order(user, first, item.category, _price(b.rng, item.low, item.high), refunded_on)
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
    amount = _price(b.rng, big.high * 0.8, big.high)
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
        channel=b.rng.choices(b.book.channels, weights=b.book.channel_weights)[0],
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


# --- invalid rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """Where the fields that invalid rows break sit in a table's row."""

    when: int
    is_date: bool
    text: int  # the free-text field an empty-text row blanks
    content: int  # the field a conflicting duplicate changes
    kinds: tuple[str, ...]


_COMMON_KINDS = (
    "missing_user",
    "unknown_user",
    "future_date",
    "bad_date",
    "duplicate_id",
    "exact_duplicate",
)
_LAYOUTS = {
    "sales": _Layout(5, True, 2, 4, (*_COMMON_KINDS, "negative_amount", "absurd_amount")),
    "behaviour": _Layout(4, False, 3, 3, (*_COMMON_KINDS, "empty_target")),
    "chat": _Layout(3, False, 2, 2, (*_COMMON_KINDS, "empty_message")),
}


def _future(rng: random.Random, is_date: bool) -> str:
    when = datetime(2030, 1, 1) + timedelta(
        days=rng.randrange(6 * 365), seconds=rng.randrange(86400)
    )
    return when.date().isoformat() if is_date else _stamp(when)


def _conflicting_value(rng: random.Random, book: Phrasebook, value: Any) -> Any:
    """A different value for the same field, as when a record was edited and exported twice."""
    if isinstance(value, float):
        return value + rng.choice((10.0, 100.0, -20.0))
    replacements = [*book.noise_chat, *(target for _, target in book.noise_events)]
    return rng.choice([r for r in replacements if r != value])


def _invalid_row(
    rng: random.Random, book: Phrasebook, table: _Table, layout: _Layout, kind: str, users: int
) -> Row:
    if kind in ("duplicate_id", "exact_duplicate") and table.noise:
        row = list(table.rows[rng.choice(table.noise)])
        if kind == "duplicate_id":  # same id, different content: which is right is unknowable
            row[layout.content] = _conflicting_value(rng, book, row[layout.content])
        return row
    row = list(rng.choice(table.rows))
    row[0] = table.new_id()
    if kind == "unknown_user":
        row[1] = f"U{users + 1 + rng.randrange(max(users, 1)):06d}"
    elif kind == "future_date":
        row[layout.when] = _future(rng, layout.is_date)
    elif kind == "bad_date":
        row[layout.when] = rng.choice(BAD_DATES if layout.is_date else BAD_TIMESTAMPS)
    elif kind == "negative_amount":
        row[4] = -abs(float(row[4]))
    elif kind == "absurd_amount":
        row[4] = float(rng.choice((880_000, 1_200_000, 9_999_999, 52_000_000)))
    elif kind in ("empty_target", "empty_message"):
        row[layout.text] = rng.choice(("", " ", "\n"))
    else:  # missing_user, also the fallback when a table has no noise rows to copy
        row[1] = rng.choice((None, "", "  "))
    return row


def _add_invalid_rows(
    rng: random.Random, book: Phrasebook, table: _Table, layout: _Layout, users: int
) -> None:
    count = round(len(table.rows) * rng.uniform(*INVALID_RATE))
    kinds = list(layout.kinds)
    rng.shuffle(kinds)  # so small tables do not always get the same few kinds
    broken = [
        _invalid_row(rng, book, table, layout, kinds[i % len(kinds)], users) for i in range(count)
    ]
    table.rows.extend(broken)


def _add_invalid_users(rng: random.Random, rows: list[Row]) -> None:
    for i in range(round(len(rows) * INVALID_USER_RATE)):
        copy = list(rng.choice(rows))
        if i % 2:
            copy[0] = rng.choice((None, "", " "))
        rows.append(copy)


# --- public API ------------------------------------------------------------------------
def _user_row(rng: random.Random, persona: Persona, signup: date) -> Row:
    """Optional columns are sometimes empty, as in any CRM export."""
    return [
        persona.user_id,
        persona.gender if rng.random() > 0.01 else None,
        persona.age if rng.random() > 0.03 else None,
        persona.city if rng.random() > 0.02 else None,
        signup,
        None,  # cohort is left to the pipeline: the signup month
    ]


def _truth_row(persona: Persona, signal_ids: list[str]) -> Row:
    return [
        persona.user_id,
        persona.intended_project,
        persona.spending_level,
        persona.purchase_intent,
        list(persona.concerns),
        list(persona.tags),
        list(persona.anomalies),
        signal_ids,
    ]


def _frame(name: str, rows: list[Row]) -> pl.DataFrame:
    schema = SCHEMAS[name]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pl.DataFrame(
        {
            name: pl.Series(name, values, dtype)
            for (name, dtype), values in zip(schema.items(), columns, strict=True)
        }
    )


def generate_tables(
    users: int,
    seed: int,
    start: date = date(2025, 1, 1),
    months: int = 6,
    style: Style = "standard",
) -> dict[str, pl.DataFrame]:
    """The four source tables plus `truth`, identical for identical arguments."""
    if users < 0 or months < 1:
        raise ValueError(f"need users >= 0 and months >= 1, got users={users}, months={months}")
    # Personas draw from their own stream so both styles describe the very same people.
    persona_rng = random.Random(seed)
    rng = random.Random(f"{seed}:rows")
    builder = _Builder(rng, phrasebook(style))
    user_rows: list[Row] = []
    truth_rows: list[Row] = []
    for number in range(1, users + 1):
        persona = draw_persona(persona_rng, f"U{number:06d}")
        signup = _signup_date(persona_rng, start, months)
        user_rows.append(_user_row(persona_rng, persona, signup))
        truth_rows.append(_truth_row(persona, _plant_user(builder, persona, signup)))
    tables = {"sales": builder.sales, "behaviour": builder.behaviour, "chat": builder.chat}
    for name, table in tables.items():
        _add_invalid_rows(rng, builder.book, table, _LAYOUTS[name], users)
        rng.shuffle(table.rows)  # real exports are not grouped by user
    _add_invalid_users(rng, user_rows)
    frames = {"users": _frame("users", user_rows)}
    frames.update({name: _frame(name, table.rows) for name, table in tables.items()})
    frames[TRUTH_TABLE] = _frame(TRUTH_TABLE, truth_rows)
    return frames


def write_source(path: Path, tables: Mapping[str, pl.DataFrame]) -> dict[str, int]:
    """Replace the given tables in the DuckDB file at `path`; return the row count of each."""
    allowed = (*SOURCE_TABLES, TRUTH_TABLE)
    unknown = [name for name in tables if name not in allowed]
    if unknown:
        raise ValueError(f"unknown source tables {unknown}; expected some of {allowed}")
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
