"""What both sample generators (`synth.generate` for the clinic, `synth.from_spec` for any
spec) share: the table schemas (the source contract's), the event tables under construction,
times and prices as people write them, and the ~2% invalid rows every table gets before it
is shuffled.
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import polars as pl

from profiling_assets.core.contract import EVENT_TABLES, SOURCE_TABLES, TRUTH_TABLE, TRUTH_TYPES

if TYPE_CHECKING:  # the two generators' personas, both read by the users and truth rows
    from profiling_assets.synth.from_spec import SpecPersona
    from profiling_assets.synth.personas import Persona

# Valid activity of a user falls within this many days after signup.
ACTIVITY_DAYS = 180
INVALID_RATE = (0.015, 0.025)  # share of invalid rows per event table, drawn per table
INVALID_USER_RATE = 0.005

BAD_DATES = ("2024/13/45", "2025-02-30", "2025-13-01", "20250431", "昨天", "N/A")
BAD_TIMESTAMPS = (
    "2024/13/45 10:00",
    "2025-02-30 12:00:00",
    "2025-06-31 25:61:00",
    "昨天下午三点",
    "N/A",
    "1700000000abc",
)


def _written_schema(table: str) -> dict[str, pl.DataType]:
    """A source table as the generators write it: the contract's columns and types, but the
    event tables' dates and times as text, so that broken values ('2024/13/45') can exist."""
    schema = {
        c.name: c.dtype if isinstance(c.dtype, pl.DataType) else c.dtype()
        for c in SOURCE_TABLES[table].columns
    }
    if table in EVENT_TABLES:
        schema = {n: pl.String() if t.is_temporal() else t for n, t in schema.items()}
    return schema


SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    **{table: _written_schema(table) for table in SOURCE_TABLES},
    TRUTH_TABLE: TRUTH_TYPES,
}

Row = list[Any]


def check_size(users: int, months: int) -> None:
    """Both generators take a user count and a number of signup months."""
    if users < 0 or months < 1:
        raise ValueError(f"need users >= 0 and months >= 1, got users={users}, months={months}")


# --- times and prices ------------------------------------------------------------------
# People write to a clinic in the day and the evening, rarely at night.
_HOURS = tuple(range(24))
_HOUR_CUM_WEIGHTS = tuple(
    accumulate((1, 0.5, 0.3, 0.2, 0.2, 0.3, 1, 2, 4, 6, 7, 7, 6, 6, 6, 6, 6, 6, 6, 7, 8, 8, 6, 3))
)


def stamp(when: datetime) -> str:
    return when.isoformat(sep=" ", timespec="seconds")


def _add_months(start: date, months: int) -> date:
    index = start.year * 12 + start.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def signup_date(rng: random.Random, start: date, months: int) -> date:
    """A day in one of the `months` calendar months from `start` (never before `start`)."""
    month = _add_months(date(start.year, start.month, 1), rng.randrange(months))
    first = max(month, start)
    last = date(month.year, month.month, calendar.monthrange(month.year, month.month)[1])
    return first + timedelta(days=rng.randint(0, (last - first).days))


def draw_price(rng: random.Random, low: float, high: float) -> float:
    """A price as clinics write them: round hundreds when large, 398-style when small."""
    amount = rng.uniform(low, high)
    if amount >= 2000:
        return float(round(amount, -2))
    rounded = round(amount, -1)
    return float(rounded - 2 if rng.random() < 0.5 else rounded)


# --- the event tables under construction -----------------------------------------------
@dataclass
class Table:
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


class TableBuilder:
    """sales, behaviour and chat under construction, all drawn from `rng`; the generators
    decide what is written, this writes the rows and finishes the tables."""

    def __init__(
        self, rng: random.Random, channels: Sequence[str], channel_weights: Sequence[float]
    ) -> None:
        self.rng = rng
        self.channels = channels
        self.channel_weights = channel_weights
        self.sales = Table("O")
        self.behaviour = Table("E")
        self.chat = Table("M")

    def add_order(
        self, user_id: str, item: str, category: str, amount: float, day: date, noise: bool
    ) -> str:
        row = [self.sales.new_id(), user_id, item, category, amount, day.isoformat()]
        return self.sales.add(row, noise)

    def add_event(
        self, user_id: str, event_type: str, target: str, when: datetime, noise: bool
    ) -> str:
        row = [self.behaviour.new_id(), user_id, event_type, target, stamp(when)]
        return self.behaviour.add(row, noise)

    def add_message(
        self, user_id: str, text: str, when: datetime, usual_channel: str, noise: bool
    ) -> str:
        """Mostly on the user's usual channel, now and then on another (or none)."""
        channel = usual_channel if self.rng.random() < 0.8 else self._channel()
        row = [self.chat.new_id(), user_id, text, stamp(when), channel]
        return self.chat.add(row, noise)

    def draw_channel(self) -> str:
        return self.rng.choices(self.channels, weights=self.channel_weights)[0]

    def _channel(self) -> str | None:
        if self.rng.random() < 0.03:  # the optional column is sometimes simply not filled
            return None
        return self.draw_channel()

    def moment_after(self, signup: date, low: int, high: int) -> datetime:
        """A time `low` to `high` days after signup, at an hour people write at."""
        hour = self.rng.choices(_HOURS, cum_weights=_HOUR_CUM_WEIGHTS)[0]
        offset = timedelta(
            days=self.rng.randint(low, high), hours=hour, seconds=self.rng.randrange(3600)
        )
        return datetime(signup.year, signup.month, signup.day) + offset

    def frames(
        self,
        user_rows: list[Row],
        truth_rows: list[Row],
        users: int,
        replacements: Sequence[str],
        *,
        skip_empty: bool = False,
        copy_broken: bool = False,
    ) -> dict[str, pl.DataFrame]:
        """The finished tables: invalid rows added, event rows shuffled (real exports are
        not grouped by user). `replacements`: texts a conflicting duplicate may say instead.
        The two generators draw invalid rows slightly differently, and each keeps its way so
        that its samples stay what they were: `skip_empty` draws nothing at all for an empty
        table; `copy_broken` lets an invalid row copy one added before it (see
        `add_invalid_rows`)."""
        tables = {"sales": self.sales, "behaviour": self.behaviour, "chat": self.chat}
        for name, table in tables.items():
            if table.rows or not skip_empty:
                add_invalid_rows(
                    self.rng,
                    table,
                    LAYOUTS[name],
                    users,
                    replacements,
                    copy_broken=copy_broken,
                )
            self.rng.shuffle(table.rows)
        add_invalid_users(self.rng, user_rows)
        result = {"users": frame("users", user_rows)}
        result.update({name: frame(name, table.rows) for name, table in tables.items()})
        result[TRUTH_TABLE] = frame(TRUTH_TABLE, truth_rows)
        return result


# --- invalid rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the fields that invalid rows break sit in a table's row."""

    when: int
    is_date: bool
    text: int  # the free-text field an empty-text row blanks
    content: int  # the field a conflicting duplicate changes
    kinds: tuple[str, ...]


COMMON_KINDS = (
    "missing_user",
    "unknown_user",
    "future_date",
    "bad_date",
    "duplicate_id",
    "exact_duplicate",
)
LAYOUTS = {
    "sales": Layout(5, True, 2, 4, (*COMMON_KINDS, "negative_amount", "absurd_amount")),
    "behaviour": Layout(4, False, 3, 3, (*COMMON_KINDS, "empty_target")),
    "chat": Layout(3, False, 2, 2, (*COMMON_KINDS, "empty_message")),
}


def future(rng: random.Random, is_date: bool) -> str:
    when = datetime(2030, 1, 1) + timedelta(
        days=rng.randrange(6 * 365), seconds=rng.randrange(86400)
    )
    return when.date().isoformat() if is_date else stamp(when)


def conflicting_value(rng: random.Random, value: Any, replacements: Sequence[str]) -> Any:
    """A different value for the same field, as when a record was edited and exported twice."""
    if isinstance(value, float):
        return value + rng.choice((10.0, 100.0, -20.0))
    return rng.choice([r for r in replacements if r != value])


def invalid_row(
    rng: random.Random,
    table: Table,
    layout: Layout,
    kind: str,
    users: int,
    replacements: Sequence[str],
) -> Row:
    if kind in ("duplicate_id", "exact_duplicate") and table.noise:
        row = list(table.rows[rng.choice(table.noise)])
        if kind == "duplicate_id":  # same id, different content: which is right is unknowable
            row[layout.content] = conflicting_value(rng, row[layout.content], replacements)
        return row
    row = list(rng.choice(table.rows))
    row[0] = table.new_id()
    if kind == "unknown_user":
        row[1] = f"U{users + 1 + rng.randrange(max(users, 1)):06d}"
    elif kind == "future_date":
        row[layout.when] = future(rng, layout.is_date)
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


def add_invalid_rows(
    rng: random.Random,
    table: Table,
    layout: Layout,
    users: int,
    replacements: Sequence[str],
    *,
    copy_broken: bool = False,
) -> None:
    """Append ~2% invalid rows, each a broken copy of a row already in `table`: of a valid
    row only, or with `copy_broken` also of an invalid row appended before it."""
    count = round(len(table.rows) * rng.uniform(*INVALID_RATE))
    kinds = list(layout.kinds)
    rng.shuffle(kinds)  # so small tables do not always get the same few kinds
    broken = (
        invalid_row(rng, table, layout, kinds[i % len(kinds)], users, replacements)
        for i in range(count)
    )
    # Extending from the generator appends each row before the next one is drawn.
    table.rows.extend(broken if copy_broken else list(broken))


def add_invalid_users(rng: random.Random, rows: list[Row]) -> None:
    for i in range(round(len(rows) * INVALID_USER_RATE)):
        copy = list(rng.choice(rows))
        if i % 2:
            copy[0] = rng.choice((None, "", " "))
        rows.append(copy)


# --- users, truth and frames -----------------------------------------------------------
def user_row(
    rng: random.Random,
    persona: Persona | SpecPersona,
    signup: date,
    keep: frozenset[str] = frozenset(),
) -> Row:
    """Optional columns are sometimes empty, as in any CRM export, unless listed in `keep`
    (columns a tag's `requires` reads)."""
    return [
        persona.user_id,
        persona.gender if rng.random() > 0.01 or "gender" in keep else None,
        persona.age if rng.random() > 0.03 or "age" in keep else None,
        persona.city if rng.random() > 0.02 else None,
        signup,
        None,  # cohort is left to the pipeline: the signup month
    ]


def truth_row(persona: Persona | SpecPersona, signal_ids: list[str]) -> Row:
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


def frame(name: str, rows: list[Row]) -> pl.DataFrame:
    schema = SCHEMAS[name]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pl.DataFrame(
        {
            name: pl.Series(name, values, dtype)
            for (name, dtype), values in zip(schema.items(), columns, strict=True)
        }
    )
