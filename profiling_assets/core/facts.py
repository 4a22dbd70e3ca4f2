"""Deterministic user facts (totals, counts, recency, RFM) computed from the validated tables.

Everything here is vectorised in polars: one group-by per event table and one left join onto
`users`, so a 100k-user cohort takes well under a second. Events dated after `as_of` are
ignored, so re-computing facts for a past date gives the same answer as on that date.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

import polars as pl

from profiling_assets.core.pii import mask_pii
from profiling_assets.core.records import UserFacts

SpendingLevel = Literal["低", "中", "高"]

# Money thresholds in 元, shared by the RFM monetary score and the spending level so the two
# never disagree. 皮肤管理 costs ~200–800 元 a session and a 全切双眼皮 ~6000–12000 元:
# one surgery-class purchase makes a user 高; a handful of skin sessions makes them 中.
SPEND_HIGH_YUAN = 6_000.0
SPEND_MID_YUAN = 1_000.0

# Recency thresholds in days since the last purchase. 医美 repurchase cycles are long
# (skin care every 4–6 weeks, surgery once), so "recent" is two months, not one.
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


def _rfm_segment() -> pl.Expr:
    # Recency scores the other way round: fewer days is better.
    days = pl.col("days_since_last_purchase")
    r = pl.when(days <= RECENT_DAYS).then(3).when(days <= LAPSING_DAYS).then(2).otherwise(1)
    f = _score(pl.col("order_count"), FREQUENT_ORDERS, REPEAT_ORDERS)
    m = _score(pl.col("total_spend"), SPEND_HIGH_YUAN, SPEND_MID_YUAN)
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


def _sales_facts(sales: pl.DataFrame, as_of: date) -> pl.DataFrame:
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
        )
        .collect()
    )


def _event_facts(events: pl.DataFrame, time_col: str, name: str, as_of: date) -> pl.DataFrame:
    return (
        events.lazy()
        .with_columns(pl.col(time_col).dt.date().alias("_day"))
        .filter(pl.col("_day") <= as_of)
        .group_by("user_id")
        .agg(pl.len().alias(f"{name}_count"), pl.col("_day").max().alias(f"last_{name}"))
        .collect()
    )


def compute_user_facts(
    users: pl.DataFrame,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    as_of: date,
) -> pl.DataFrame:
    """One row per user in `users`, columns = the fields of `UserFacts`, in that order.

    Users without events get zero counts, empty lists, `None` dates and segment 未消费.
    `purchase_frequency_per_month` is orders per month of tenure, tenure running from the
    earlier of signup and first purchase to `as_of`, floored at one month so a new user's
    single order does not read as 30 orders a month.
    `days_since_last_activity` is over purchases, behaviour events and chat messages.
    """
    today = pl.lit(as_of, dtype=pl.Date)
    empty_list = pl.lit([], dtype=_STR_LIST)
    last_activity = pl.max_horizontal("last_purchase", "last_browse", "last_chat")
    tenure_start = pl.min_horizontal("signup_date", "first_purchase")
    tenure_months = ((today - tenure_start).dt.total_days() / DAYS_PER_MONTH).clip(lower_bound=1.0)

    base = users.select(
        "user_id",
        # Validation fills `cohort`; the signup month is the contract's fallback.
        pl.col("cohort").fill_null(pl.col("signup_date").dt.strftime("%Y-%m")),
        "gender",
        pl.col("age").cast(pl.Int64),
        _masked("city"),
        "signup_date",
    )
    joined = (
        base.join(_sales_facts(sales, as_of), on="user_id", how="left")
        .join(_event_facts(behaviour, "event_time", "browse", as_of), on="user_id", how="left")
        .join(_event_facts(chat, "sent_at", "chat", as_of), on="user_id", how="left")
        .with_columns(
            pl.col("total_spend").fill_null(0.0),
            pl.col("order_count", "browse_count", "chat_count").fill_null(0).cast(pl.Int64),
            pl.col("categories", "items").fill_null(empty_list),
            (today - pl.col("last_purchase")).dt.total_days().alias("days_since_last_purchase"),
            (today - last_activity).dt.total_days().alias("days_since_last_activity"),
        )
        .with_columns(
            (pl.col("order_count") / tenure_months).alias("purchase_frequency_per_month"),
            pl.when(pl.col("order_count") > 0)
            .then(pl.col("total_spend") / pl.col("order_count"))
            .otherwise(0.0)
            .alias("monetary_avg"),
            _rfm_segment().alias("rfm_segment"),
            today.alias("as_of"),
        )
    )
    return joined.select(FACT_COLUMNS)


def facts_records(df: pl.DataFrame) -> list[UserFacts]:
    """The rows of `compute_user_facts` as validated `UserFacts`."""
    return [UserFacts(**row) for row in df.select(FACT_COLUMNS).iter_rows(named=True)]


def spending_level_from_facts(facts: UserFacts) -> SpendingLevel:
    """消费能力 from total spend: 高 ≥ 6000 元, 中 ≥ 1000 元, else 低 (see SPEND_* above)."""
    if facts.total_spend >= SPEND_HIGH_YUAN:
        return "高"
    if facts.total_spend >= SPEND_MID_YUAN:
        return "中"
    return "低"
