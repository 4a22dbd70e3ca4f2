"""Deterministic user facts (totals, counts, recency, RFM) computed from the validated tables.

Everything here is vectorised in polars: one group-by per event table and one left join onto
`users`, so a 100k-user cohort takes well under a second. Events dated after `as_of` are
ignored, so re-computing facts for a past date gives the same answer as on that date.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import NamedTuple

import polars as pl

from profiling_assets.core.pii import mask_pii
from profiling_assets.core.records import UserFacts
from profiling_assets.core.spec import Spending

# Recency thresholds of the RFM score in days since the last purchase: "recent" is two
# months, long enough for businesses whose customers come back every few weeks.
RECENT_DAYS = 60
LAPSING_DAYS = 180

# Frequency thresholds in number of orders: one order is a trial, four or more a regular.
FREQUENT_ORDERS = 4
REPEAT_ORDERS = 2

# Days per average month, for orders-per-month.
DAYS_PER_MONTH = 30.4375

# RFM segments in report order. Fixed thresholds (not per-cohort quantiles) keep a segment
# meaning the same thing in every cohort, so cohorts can be compared side by side.
SEGMENT_HIGH_ACTIVE = "高价值活跃"  # M=3, bought within LAPSING_DAYS
SEGMENT_HIGH_DORMANT = "高价值沉睡"  # M=3, no purchase for over LAPSING_DAYS
SEGMENT_NEW = "潜力新客"  # a single recent order, not yet high value
SEGMENT_STEADY = "一般维持"  # everything else that bought within LAPSING_DAYS
SEGMENT_AT_RISK = "流失风险"  # not high value and no purchase for over LAPSING_DAYS
SEGMENT_NONE = "未消费"  # no orders at all
RFM_SEGMENTS: tuple[str, ...] = (
    SEGMENT_HIGH_ACTIVE,
    SEGMENT_HIGH_DORMANT,
    SEGMENT_NEW,
    SEGMENT_STEADY,
    SEGMENT_AT_RISK,
    SEGMENT_NONE,
)

FACT_COLUMNS: tuple[str, ...] = tuple(UserFacts.model_fields)

_STR_LIST = pl.List(pl.String)


def _score(expr: pl.Expr, high: float, mid: float) -> pl.Expr:
    """1–3 score: 3 at or above `high`, 2 at or above `mid`, else 1."""
    return pl.when(expr >= high).then(3).when(expr >= mid).then(2).otherwise(1)


class SpendThresholds(NamedTuple):
    """Resolved money thresholds (the spec's currency) of one cohort: 高 ≥ high, 中 ≥ mid.
    Shared by the RFM monetary score and the spending level so the two never disagree."""

    high: float
    mid: float


def spend_thresholds(spending: Spending, totals: pl.Series) -> SpendThresholds:
    """The spec's fixed thresholds, or the quantiles of the buyers' total spend (users who
    spent nothing would drag every quantile to 0)."""
    if spending.mode == "fixed":
        assert spending.high is not None and spending.mid is not None
        return SpendThresholds(spending.high, spending.mid)
    buyers = totals.filter(totals > 0)
    if buyers.is_empty():
        return SpendThresholds(float("inf"), float("inf"))
    assert spending.high_quantile is not None and spending.mid_quantile is not None
    high = float(buyers.quantile(spending.high_quantile, "lower") or 0.0)
    mid = float(buyers.quantile(spending.mid_quantile, "lower") or 0.0)
    return SpendThresholds(high, min(mid, high))


def _spending_level(thresholds: SpendThresholds) -> pl.Expr:
    spend = pl.col("total_spend")
    return (
        pl.when((spend >= thresholds.high) & (spend > 0))
        .then(pl.lit("高"))
        .when((spend >= thresholds.mid) & (spend > 0))
        .then(pl.lit("中"))
        .otherwise(pl.lit("低"))
    )


def _rfm_segment(thresholds: SpendThresholds) -> pl.Expr:
    # Recency scores the other way round: fewer days is better.
    days = pl.col("days_since_last_purchase")
    r = pl.when(days <= RECENT_DAYS).then(3).when(days <= LAPSING_DAYS).then(2).otherwise(1)
    f = _score(pl.col("order_count"), FREQUENT_ORDERS, REPEAT_ORDERS)
    m = _score(pl.col("total_spend"), thresholds.high, thresholds.mid)
    return (
        pl.when(pl.col("order_count") == 0)
        .then(pl.lit(SEGMENT_NONE))
        .when((m == 3) & (r >= 2))
        .then(pl.lit(SEGMENT_HIGH_ACTIVE))
        .when(m == 3)
        .then(pl.lit(SEGMENT_HIGH_DORMANT))
        .when((r == 3) & (f == 1))
        .then(pl.lit(SEGMENT_NEW))
        .when(r == 1)
        .then(pl.lit(SEGMENT_AT_RISK))
        .otherwise(pl.lit(SEGMENT_STEADY))
    )


def _mask_values(values: pl.Series) -> pl.Series:
    unique = values.drop_nulls().unique()
    return values.replace(unique, [mask_pii(v) for v in unique])


def _masked(column: str) -> pl.Expr:
    """Free text that facts carry into prompts, profiles and reports, with personal data
    masked as in the documents (once per distinct value: item and city names repeat)."""
    return pl.col(column).map_batches(_mask_values, return_dtype=pl.String)


def _sales_facts(sales: pl.DataFrame, as_of: date, recent_from: date) -> pl.DataFrame:
    return (
        sales.lazy()
        .filter(pl.col("order_date") <= as_of)
        .with_columns(_masked("category"), _masked("item"))
        .group_by("user_id")
        .agg(
            pl.col("amount").sum().alias("total_spend"),
            pl.len().alias("order_count"),
            pl.col("order_date").min().alias("first_purchase"),
            pl.col("order_date").max().alias("last_purchase"),
            pl.col("category").drop_nulls().unique().sort().alias("categories"),
            pl.col("item").drop_nulls().unique().sort().alias("items"),
            (pl.col("order_date") > recent_from).sum().alias("recent_order_count"),
        )
        .collect()
    )


def _event_facts(
    events: pl.DataFrame, time_col: str, name: str, as_of: date, recent_from: date
) -> pl.DataFrame:
    return (
        events.lazy()
        .with_columns(pl.col(time_col).dt.date().alias("_day"))
        .filter(pl.col("_day") <= as_of)
        .group_by("user_id")
        .agg(
            pl.len().alias(f"{name}_count"),
            pl.col("_day").max().alias(f"last_{name}"),
            (pl.col("_day") > recent_from).sum().alias(f"recent_{name}_count"),
        )
        .collect()
    )


def compute_user_facts(
    users: pl.DataFrame,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    as_of: date,
    spending: Spending,
    recent_days: int = 30,
) -> pl.DataFrame:
    """One row per user in `users`, columns = the fields of `UserFacts`, in that order.

    Users without events get zero counts, empty lists, `None` dates and segment 未消费.
    `purchase_frequency_per_month` is orders per month of tenure, tenure running from the
    earlier of signup and first purchase to `as_of`, floored at one month so a new user's
    single order does not read as 30 orders a month.
    `days_since_last_activity` is over purchases, behaviour events and chat messages;
    `recent_*_count` count the `recent_days` up to `as_of`. The spending level follows the
    spec (`spend_thresholds`: fixed, or quantiles of this cohort's buyers).
    """
    recent_from = as_of - timedelta(days=recent_days)
    joined = (
        _user_columns(users)
        .join(_sales_facts(sales, as_of, recent_from), on="user_id", how="left")
        .join(
            _event_facts(behaviour, "event_time", "browse", as_of, recent_from),
            on="user_id",
            how="left",
        )
        .join(_event_facts(chat, "sent_at", "chat", as_of, recent_from), on="user_id", how="left")
    )
    derived = _with_derived_facts(joined, as_of)
    thresholds = spend_thresholds(spending, derived["total_spend"])
    return derived.with_columns(
        _rfm_segment(thresholds).alias("rfm_segment"),
        _spending_level(thresholds).alias("spending_level"),
    ).select(FACT_COLUMNS)


def _user_columns(users: pl.DataFrame) -> pl.DataFrame:
    """The `users` columns facts keep (city masked), plus `signup_date` for the tenure."""
    return users.select(
        "user_id",
        # Validation fills `cohort`; the signup month is the contract's fallback.
        pl.col("cohort").fill_null(pl.col("signup_date").dt.strftime("%Y-%m")),
        "gender",
        pl.col("age").cast(pl.Int64),
        _masked("city"),
        "signup_date",
    )


def _with_derived_facts(joined: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """Users joined with their event aggregates, with zeros for users without events and
    the facts computed from the aggregates: recency, frequency, average order, `as_of`."""
    today = pl.lit(as_of, dtype=pl.Date)
    last_activity = pl.max_horizontal("last_purchase", "last_browse", "last_chat")
    tenure_start = pl.min_horizontal("signup_date", "first_purchase")
    tenure_months = ((today - tenure_start).dt.total_days() / DAYS_PER_MONTH).clip(lower_bound=1.0)
    return joined.with_columns(
        pl.col("total_spend").fill_null(0.0),
        pl.col(
            "order_count",
            "browse_count",
            "chat_count",
            "recent_order_count",
            "recent_browse_count",
            "recent_chat_count",
        )
        .fill_null(0)
        .cast(pl.Int64),
        pl.col("categories", "items").fill_null(pl.lit([], dtype=_STR_LIST)),
        (today - pl.col("last_purchase")).dt.total_days().alias("days_since_last_purchase"),
        (today - last_activity).dt.total_days().alias("days_since_last_activity"),
    ).with_columns(
        (pl.col("order_count") / tenure_months).alias("purchase_frequency_per_month"),
        pl.when(pl.col("order_count") > 0)
        .then(pl.col("total_spend") / pl.col("order_count"))
        .otherwise(0.0)
        .alias("monetary_avg"),
        today.alias("as_of"),
    )


def facts_records(df: pl.DataFrame) -> list[UserFacts]:
    """The rows of `compute_user_facts` as validated `UserFacts`."""
    return [UserFacts(**row) for row in df.select(FACT_COLUMNS).iter_rows(named=True)]
