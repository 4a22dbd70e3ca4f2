"""Anomaly findings (异常) computed from a cohort's validated tables by the spec's anomaly rules.

Each rule kind in `spec.AnomalyRule` gives at most one `AnomalyFinding` per user: the rule's
name, the ids of the rows behind it (so the profile can cite them) and one short Chinese
sentence with the numbers. Everything is vectorised polars over the whole cohort (a keyword
scan, an as-of join, a rolling count, a rank-based median), so 100k users with a million chat
rows take seconds; Python only loops over the findings to build the records. Pure functions,
no Dagster, deterministic: equal inputs give equal findings in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, field_validator

from profiling_assets.core.spec import (
    AnomalyRule,
    Keywords,
    LargeOrder,
    MessageBurst,
    RefundThenLargeOrder,
)

# How many source ids one finding cites: enough to check it, few enough to fit a prompt.
MAX_BURST_IDS = 20
MAX_LARGE_ORDER_IDS = 3
MAX_KEYWORD_IDS = 5
# How many matched keywords a keywords finding names in its sentence.
MAX_NAMED_KEYWORDS = 3

# The sales columns a finding reads, ids as text whatever type the source stored them in.
_ORDER_COLUMNS: tuple[pl.Expr | str, ...] = (
    pl.col("user_id").cast(pl.String),
    pl.col("order_id").cast(pl.String),
    "amount",
    "order_date",
)

TableName = Literal["chat", "behaviour"]
# Per table: (id column, time column, text column) of a row that can mention a keyword.
_TEXT_TABLES: dict[TableName, tuple[str, str, str]] = {
    "chat": ("message_id", "sent_at", "message"),
    "behaviour": ("event_id", "event_time", "target"),
}


class AnomalyFinding(BaseModel):
    """One anomaly rule that holds for one user, with the rows that show it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str
    anomaly: str
    source_ids: list[str]
    detail: str

    @field_validator("source_ids")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        # Sorted and deduplicated whatever the caller passed, so findings compare equal.
        return sorted(set(value))


def _number(value: float, digits: int = 2) -> str:
    """28000.0 → "28000", 1234.5 → "1234.5": no float noise, no scientific notation."""
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _first_keyword(text: str, keywords: Sequence[str]) -> str:
    """The first rule keyword (in rule order) that `text` contains, ASCII case-insensitively."""
    folded = text.lower()
    return next((k for k in keywords if k.lower() in folded), keywords[0])


def _findings(
    rule_name: str, rows: pl.DataFrame, detail: Callable[[dict[str, Any]], str]
) -> list[AnomalyFinding]:
    """One finding per row of `rows` (one row per user, with `user_id` and the cited `ids`):
    the rule's name and the sentence `detail` writes from the row."""
    return [
        AnomalyFinding(
            user_id=row["user_id"], anomaly=rule_name, source_ids=row["ids"], detail=detail(row)
        )
        for row in rows.iter_rows(named=True)
    ]


def _mentions(
    keywords: Sequence[str],
    tables: Sequence[TableName],
    chat: pl.DataFrame,
    behaviour: pl.DataFrame,
) -> pl.DataFrame:
    """Rows of the named tables whose text contains a keyword: user_id, source_id, at, text.

    Literal substring match (Aho–Corasick, no word boundaries, so it works for Chinese),
    case-insensitive for ASCII letters so "Refund" matches "refund".
    """
    frames: dict[TableName, pl.DataFrame] = {"chat": chat, "behaviour": behaviour}
    parts: list[pl.LazyFrame] = []
    for name in dict.fromkeys(tables):
        frame = frames[name]
        if frame.height == 0:
            continue  # an empty table may carry Null-typed columns: skip, do not cast
        id_col, time_col, text_col = _TEXT_TABLES[name]
        parts.append(
            frame.lazy()
            .filter(pl.col(text_col).str.contains_any(list(keywords), ascii_case_insensitive=True))
            .select(
                pl.col("user_id").cast(pl.String),
                pl.col(id_col).cast(pl.String).alias("source_id"),
                pl.col(time_col).cast(pl.Datetime("us")).alias("at"),
                pl.col(text_col).alias("text"),
                pl.lit(name).alias("table"),
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={
                "user_id": pl.String,
                "source_id": pl.String,
                "at": pl.Datetime("us"),
                "text": pl.String,
                "table": pl.String,
            }
        )
    return pl.concat(parts).collect()


def _refund_then_large_order(
    rule: RefundThenLargeOrder,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    currency: str,
) -> list[AnomalyFinding]:
    """Users who mention a refund keyword and place a large order within the rule's days:
    the earliest such mention per user, with the first large order on or after its day."""
    if sales.height == 0:
        return []
    mentions = _mentions(rule.refund_keywords, ("chat", "behaviour"), chat, behaviour)
    if mentions.height == 0:
        return []
    orders = _largest_order_per_day(sales, rule.min_amount)
    if orders.height == 0:
        return []

    def detail(row: dict[str, Any]) -> str:
        keyword = _first_keyword(row["text"], rule.refund_keywords)
        when = "当天" if row["gap"] == 0 else f"{row['gap']} 天后"
        return f"{row['day']} 提到{keyword}，{when}下单 {_number(row['amount'])} {currency}"

    return _findings(rule.name, _mentions_before_orders(mentions, orders, rule.within_days), detail)


def _largest_order_per_day(sales: pl.DataFrame, min_amount: float) -> pl.DataFrame:
    """Orders of at least `min_amount`, one per user and day (the biggest, then the smallest
    id) so the as-of join, which picks one row per key, has no ties to break arbitrarily;
    sorted by day as that join needs."""
    return (
        sales.lazy()
        .filter(pl.col("amount") >= min_amount)
        .select(_ORDER_COLUMNS)
        .sort(
            ["user_id", "order_date", "amount", "order_id"], descending=[False, False, True, False]
        )
        .unique(["user_id", "order_date"], keep="first", maintain_order=True)
        .sort("order_date")
        .collect()
    )


def _mentions_before_orders(
    mentions: pl.DataFrame, orders: pl.DataFrame, within_days: int
) -> pl.DataFrame:
    """Per user, the earliest mention whose next large order (on or after the mention's day)
    is at most `within_days` later: the mention's columns plus the order's, `day`, `gap` and
    `ids` (the mention's and the order's)."""
    # The as-of join needs both sides sorted by its key (the day); ties broken for determinism.
    mentions = mentions.with_columns(pl.col("at").dt.date().alias("day")).sort(
        "day", "at", "source_id"
    )
    return (
        mentions.join_asof(
            orders,
            left_on="day",
            right_on="order_date",
            by="user_id",
            strategy="forward",
            coalesce=False,
            check_sortedness=False,  # sorted above; polars cannot check it with `by`
        )
        .filter(pl.col("order_id").is_not_null())
        .with_columns((pl.col("order_date") - pl.col("day")).dt.total_days().alias("gap"))
        .filter(pl.col("gap") <= within_days)
        .sort("user_id", "at", "source_id")
        .unique("user_id", keep="first", maintain_order=True)
        .with_columns(pl.concat_list("source_id", "order_id").alias("ids"))
    )


def _message_burst(rule: MessageBurst, chat: pl.DataFrame) -> list[AnomalyFinding]:
    if chat.height < rule.min_messages:
        return []
    period = timedelta(hours=rule.within_hours)
    lag = rule.min_messages - 1
    messages = (
        chat.lazy()
        .select(
            pl.col("user_id").cast(pl.String),
            pl.col("message_id").cast(pl.String).alias("source_id"),
            pl.col("sent_at").cast(pl.Datetime("us")).alias("at"),
        )
        .sort("user_id", "at", "source_id")
        .collect()
    )
    # Cheap screen over the whole cohort: with times sorted, a user has `min_messages` within
    # the period iff some message is within the period of the one `lag` places before it.
    burst_users = messages.filter(
        (pl.col("user_id") == pl.col("user_id").shift(lag))
        & ((pl.col("at") - pl.col("at").shift(lag)) <= period)
    ).select(pl.col("user_id").unique())
    if burst_users.height == 0:
        return []
    rows = messages.join(burst_users, on="user_id", how="semi").sort("user_id", "at", "source_id")
    # The densest window ends at one of the user's messages: count each backward window
    # [t - period, t] and keep the largest (earliest on ties).
    counts = rows.rolling(index_column="at", period=period, group_by="user_id", closed="both").agg(
        pl.len().alias("n")
    )
    best = (
        counts.sort(["user_id", "n", "at"], descending=[False, True, False])
        .unique("user_id", keep="first", maintain_order=True)
        .select("user_id", pl.col("at").alias("end"))
    )
    windows = (
        rows.join(best, on="user_id")
        .filter((pl.col("at") <= pl.col("end")) & (pl.col("at") >= pl.col("end") - period))
        .group_by("user_id")
        .agg(
            pl.len().alias("n"),
            pl.col("at").min().alias("start"),
            pl.col("source_id").sort_by("at", "source_id").head(MAX_BURST_IDS).alias("ids"),
        )
        .filter(pl.col("n") >= rule.min_messages)
    )
    hours = _number(rule.within_hours)

    def detail(row: dict[str, Any]) -> str:
        start: datetime = row["start"]
        return f"{start:%Y-%m-%d %H:%M} 起 {hours} 小时内发了 {row['n']} 条消息"

    return _findings(rule.name, windows, detail)


def _user_other_median(sales: pl.DataFrame) -> pl.DataFrame:
    """Sales plus `baseline`: the median of the same user's *other* orders (null under 3 orders).

    Without materialising per-user lists: rows are sorted by (user, amount), so the value of
    rank r among a user's orders sits at global row `start + r`. Dropping the order at rank k
    shifts the ranks at and above k up by one; the median of the remaining m = n - 1 values is
    the mean of ranks (m - 1) // 2 and m // 2 (the same rank when m is odd).
    """
    ranked = (
        sales.select(_ORDER_COLUMNS)
        .sort("user_id", "amount", "order_id")
        .with_row_index("_row")
        .with_columns(
            pl.len().over("user_id").alias("_n"),
            pl.col("_row").min().over("user_id").alias("_start"),
        )
        .with_columns((pl.col("_row") - pl.col("_start")).alias("_k"))
    )
    last_row = ranked.height - 1
    remaining = pl.col("_n").cast(pl.Int64) - 1

    def other_value(rank: pl.Expr) -> pl.Expr:
        skip = (rank >= pl.col("_k")).cast(pl.Int64)
        position = pl.col("_start").cast(pl.Int64) + rank + skip
        # Users under 3 orders get nulls below; clip so their positions stay in range.
        return pl.col("amount").gather(position.clip(0, last_row))

    median = (other_value((remaining - 1) // 2) + other_value(remaining // 2)) / 2
    return ranked.with_columns(
        pl.when(pl.col("_n") >= 3).then(median).otherwise(None).alias("baseline")
    ).drop("_row", "_n", "_start", "_k")


def _large_order(rule: LargeOrder, sales: pl.DataFrame, currency: str) -> list[AnomalyFinding]:
    if sales.height == 0:
        return []
    if rule.baseline == "cohort_median":
        cohort_median = sales["amount"].median()
        if cohort_median is None:
            return []
        with_baseline = sales.select(
            *_ORDER_COLUMNS, pl.lit(float(cohort_median)).alias("baseline")
        )
        baseline_name = "全体订单中位数"
    else:
        with_baseline = _user_other_median(sales)
        baseline_name = "该用户其他订单中位数"
    flagged = (
        with_baseline.lazy()
        # A zero baseline makes any ratio true and meaningless: no basis to call it large.
        .filter(
            (pl.col("baseline") > 0)
            & (pl.col("amount") >= rule.ratio * pl.col("baseline"))
            & (pl.col("amount") >= rule.min_amount)
        )
        .sort(["user_id", "amount", "order_id"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .agg(
            pl.len().alias("n"),
            pl.col("order_id").head(MAX_LARGE_ORDER_IDS).alias("ids"),
            pl.col("amount").first(),
            pl.col("order_date").first(),
            pl.col("baseline").first(),
        )
        .collect()
    )

    def detail(row: dict[str, Any]) -> str:
        amount, baseline = row["amount"], row["baseline"]
        text = (
            f"{row['order_date']} 一单 {_number(amount)} {currency}，是{baseline_name} "
            f"{_number(baseline)} {currency} 的 {_number(amount / baseline, 1)} 倍"
        )
        return text + f"，共 {row['n']} 单超标" if row["n"] > 1 else text

    return _findings(rule.name, flagged, detail)


def _keywords(rule: Keywords, behaviour: pl.DataFrame, chat: pl.DataFrame) -> list[AnomalyFinding]:
    hits = _mentions(rule.keywords, rule.tables, chat, behaviour)
    if hits.height == 0:
        return []
    # Map what matched (as written in the text, any ASCII case) back to the rule's keyword.
    canonical = {k.lower(): k for k in reversed(rule.keywords)}
    order = {k: i for i, k in enumerate(rule.keywords)}
    per_user = (
        hits.lazy()
        .sort("user_id", "at", "source_id")
        .with_columns(
            pl.col("text")
            .str.extract_many(list(rule.keywords), ascii_case_insensitive=True)
            .list.eval(pl.element().str.to_lowercase())
            .alias("found")
        )
        .group_by("user_id", maintain_order=True)
        .agg(
            pl.len().alias("n"),
            pl.col("source_id").head(MAX_KEYWORD_IDS).alias("ids"),
            pl.col("at").first().alias("first"),
            pl.col("found")
            .list.explode(keep_nulls=False, empty_as_null=False)
            .unique()
            .alias("found"),
            (pl.col("table") == "chat").all().alias("chat_only"),
        )
        .collect()
    )

    def detail(row: dict[str, Any]) -> str:
        names = sorted({canonical.get(f, f) for f in row["found"]}, key=lambda k: order.get(k, 0))
        quoted = "".join(f"“{k}”" for k in names[:MAX_NAMED_KEYWORDS])
        unit = "条消息" if row["chat_only"] else "条记录"
        first_day: date = row["first"].date()
        return f"{first_day} 起有 {row['n']} {unit}提到{quoted}"

    return _findings(rule.name, per_user, detail)


def detect_anomalies(
    rules: Sequence[AnomalyRule],
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    currency: str = "元",
) -> list[AnomalyFinding]:
    """All findings of `rules` over one cohort's validated tables.

    At most one finding per user and rule, sorted by user id and then by the rule's position
    in `rules`. Empty tables (0 rows with the contract's columns) give no findings.
    """
    ranked: list[tuple[str, int, AnomalyFinding]] = []
    for index, rule in enumerate(rules):
        if isinstance(rule, RefundThenLargeOrder):
            found = _refund_then_large_order(rule, sales, behaviour, chat, currency)
        elif isinstance(rule, MessageBurst):
            found = _message_burst(rule, chat)
        elif isinstance(rule, LargeOrder):
            found = _large_order(rule, sales, currency)
        elif isinstance(rule, Keywords):
            found = _keywords(rule, behaviour, chat)
        else:  # pragma: no cover - the spec's discriminated union admits nothing else
            raise TypeError(f"未知的异常规则类型：{type(rule).__name__}")
        ranked.extend((f.user_id, index, f) for f in found)
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [finding for _, _, finding in ranked]
