"""A cohort's documents rendered as polars expressions: the same Markdown and lines as
`core.documents.render_user_document` gives user by user, at columnar speed.

The per-record Python renderer stays the reference (the golden-document tests read it);
this module is what the `user_documents` asset runs, and a test holds the two equal on
hostile and generated data. Python touches only what polars has no expression for: the
few values the cheap PII probe flags (`mask_pii`) and the distinct amounts (`_fmt_amount`).
"""

from __future__ import annotations

import polars as pl

from profiling_assets.core.documents import (
    _FULL_WIDTH,
    _MARKDOWN_OPENERS,
    _MAX_FIELD_CHARS,
    ID_SOURCES_COLUMN,
    LINE_STRUCT,
    SECTION_BASIC,
    SECTION_BROWSING,
    SECTION_CHAT,
    SECTION_SALES,
    SUB_OTHER,
    SalesLayout,
    _fmt_amount,
    documents_frame,
    neutralise_user_text,
)
from profiling_assets.core.pii import _NEUTRALISED_TAGS, mask_pii_series

# `documents._CONTROL` in the Rust regex dialect.
_CONTROL_RE = r"[\x00-\x1f\x7f-\x9f\x{200b}-\x{200f}\x{2028}-\x{202e}\x{2060}-\x{206f}\x{feff}]"
_OPENER_KEYS = [chr(k) for k in _MARKDOWN_OPENERS]
_OPENER_VALUES = [str(v) for v in _MARKDOWN_OPENERS.values()]
_KEY_PREFIX = r"^([A-Za-z][A-Za-z0-9 ]*)"
_SECTION_ORDER = {SECTION_BASIC: 0, SECTION_SALES: 1, SECTION_BROWSING: 2, SECTION_CHAT: 3}
NO_DATE = "日期不详"
# Users per batch: the text columns of one batch are what is held at once (~1 KiB a user).
RENDER_BATCH_USERS = 25_000


def neutralise_expr(text: pl.Series, limit: int | None = None) -> pl.Series:
    """`neutralise_user_text` over a column, step for step (see there for the why)."""
    frame = text.cast(pl.String).to_frame("t")
    col = pl.col("t")
    col = col.str.normalize("NFC").str.replace_all(_CONTROL_RE, " ")
    col = (
        col.str.replace_all(r"\s+", " ")
        .str.strip_chars()
        .str.replace_many(_OPENER_KEYS, _OPENER_VALUES)
    )
    escaped = frame.select(col).to_series()
    masked = mask_pii_series(escaped).to_frame("t")
    # `mask_pii` turns a neutralised tag back into its one spelling, flagged or not.
    col = pl.col("t").str.replace_many(list(_NEUTRALISED_TAGS), list(_NEUTRALISED_TAGS.values()))
    col = col.str.replace_all("_", "＿", literal=True)
    for sign, wide in _FULL_WIDTH.items():
        col = col.str.replace(_KEY_PREFIX + sign, "${1}" + wide)
    col = col.str.replace(r"^([-+=]|\d+[.)])", r"\${1}")
    if limit is not None:
        col = (
            pl.when(col.str.len_chars() > limit)
            .then(col.str.slice(0, limit - 1) + "…")
            .otherwise(col)
        )
    return masked.select(col).to_series().alias(text.name)


def _day(column: str) -> pl.Expr:
    return pl.col(column).dt.strftime("%Y-%m-%d").fill_null(NO_DATE)


def _lines(
    section: str,
    subsection: pl.Expr,
    sub_order: pl.Expr,
    text: pl.Expr,
    when: pl.Expr,
    source_id: str,
) -> list[pl.Expr]:
    return [
        pl.col("user_id"),
        pl.lit(_SECTION_ORDER[section], pl.Int8).alias("sec"),
        sub_order.cast(pl.Int32).alias("sub"),
        when.cast(pl.Datetime("us")).alias("at"),
        pl.col(source_id).cast(pl.String).alias("source_id"),
        pl.lit(section, pl.String).alias("section"),
        subsection.cast(pl.String).alias("subsection"),
        text.alias("text"),
    ]


def _basic_lines(users: pl.DataFrame) -> pl.DataFrame:
    if ID_SOURCES_COLUMN not in users.columns:
        users = users.with_columns(pl.lit(None, pl.String).alias(ID_SOURCES_COLUMN))
    gender = neutralise_expr(users["gender"].cast(pl.String).fill_null(""), 10)
    city = neutralise_expr(users["city"].cast(pl.String).fill_null(""), 30)
    frame = users.with_columns(gender.alias("__gender"), city.alias("__city"))
    # A value present but empty is left out, as `basic_line`'s truthiness test does.
    given = pl.col("gender").cast(pl.String).fill_null("") != ""
    lived = pl.col("city").cast(pl.String).fill_null("") != ""
    age = pl.col("age").cast(pl.Int64).cast(pl.String) + " 岁"
    text = pl.concat_str(
        [
            pl.when(given).then(pl.col("__gender")),
            age,
            pl.when(lived).then("常住" + pl.col("__city")),
            _day("signup_date") + " 注册",
            pl.when(pl.col(ID_SOURCES_COLUMN).fill_null("") != "").then(
                "身份来源：" + pl.col(ID_SOURCES_COLUMN)
            ),
        ],
        separator="，",
        ignore_nulls=True,
    )
    return frame.select(
        _lines(SECTION_BASIC, pl.lit(None), pl.lit(0), text, pl.lit(None), "user_id")
    )


def _sales_lines(sales: pl.DataFrame, layout: SalesLayout) -> pl.DataFrame:
    currency = neutralise_user_text(layout.currency, 4)
    order = {heading: i for i, heading in enumerate(layout.headings)}
    known = {c: s for c, s in layout.section_of_category.items() if s in order}
    amounts = sales["amount"].unique().drop_nulls().to_list()
    amount_text = {a: _fmt_amount(a) for a in amounts}
    item = neutralise_expr(sales["item"], _MAX_FIELD_CHARS)
    frame = sales.with_columns(
        item.alias("__item"),
        pl.col("category")
        .cast(pl.String)
        .fill_null("")
        .replace_strict(known, default=SUB_OTHER, return_dtype=pl.String)
        .alias("__sub"),
    )
    text = pl.concat_str(
        [
            pl.lit("项目："),
            pl.col("__item"),
            pl.lit("；金额："),
            pl.col("amount").replace_strict(amount_text, return_dtype=pl.String),
            pl.lit(f" {currency}；日期："),
            _day("order_date"),
        ]
    )
    sub_order = pl.col("__sub").replace_strict(order, return_dtype=pl.Int32)
    return frame.select(
        _lines(SECTION_SALES, pl.col("__sub"), sub_order, text, pl.col("order_date"), "order_id")
    )


def _behaviour_lines(behaviour: pl.DataFrame) -> pl.DataFrame:
    frame = behaviour.with_columns(
        neutralise_expr(behaviour["event_type"], 20).alias("__kind"),
        neutralise_expr(behaviour["target"], _MAX_FIELD_CHARS).alias("__target"),
    )
    text = pl.concat_str(
        [pl.col("__kind"), pl.lit("："), pl.col("__target"), pl.lit("（"), _day("event_time")]
    ) + pl.lit("）")
    return frame.select(
        _lines(SECTION_BROWSING, pl.lit(None), pl.lit(0), text, pl.col("event_time"), "event_id")
    )


def _chat_lines(chat: pl.DataFrame) -> pl.DataFrame:
    channel = chat["channel"].cast(pl.String).fill_null("")
    frame = chat.with_columns(
        (channel != "").alias("__has_channel"),
        neutralise_expr(channel, 20).alias("__channel"),
        neutralise_expr(chat["message"]).alias("__said"),
    )
    where = pl.when(pl.col("__has_channel")).then("在" + pl.col("__channel"))
    text = pl.concat_str(
        [_day("sent_at"), pl.lit(" "), where.fill_null(""), pl.lit("说：“"), pl.col("__said")]
    ) + pl.lit("”")
    return frame.select(
        _lines(SECTION_CHAT, pl.lit(None), pl.lit(0), text, pl.col("sent_at"), "message_id")
    )


def _markdown_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Each line as it reads in the document: the headings that open before it, then `- text`
    (`render_markdown`'s rules, as shifts over the sorted lines)."""
    new_user = pl.col("user_id") != pl.col("user_id").shift(1)
    new_section = new_user.fill_null(True) | (pl.col("sec") != pl.col("sec").shift(1))
    changed_sub = (pl.col("subsection") != pl.col("subsection").shift(1)).fill_null(True)
    new_sub = pl.col("subsection").is_not_null() & (new_section | changed_sub)
    section_head = pl.when(new_section).then(
        pl.when(new_user.fill_null(True)).then(pl.lit("")).otherwise(pl.lit("\n"))
        + "## "
        + pl.col("section")
        + "\n"
    )
    sub_head = pl.when(new_sub).then("### " + pl.col("subsection") + "\n")
    md = pl.concat_str(
        [section_head.fill_null(""), sub_head.fill_null(""), pl.lit("- "), pl.col("text")]
    )
    return lines.with_columns(md.alias("md"))


def _render_batch(
    users: pl.DataFrame,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    layout: SalesLayout,
) -> pl.DataFrame:
    lines = pl.concat(
        [
            _basic_lines(users),
            _sales_lines(sales, layout),
            _behaviour_lines(behaviour),
            _chat_lines(chat),
        ]
    ).sort(["user_id", "sec", "sub", "at", "source_id"], nulls_last=False, maintain_order=True)
    lines = _markdown_lines(lines)
    struct = pl.struct("section", "subsection", "text", "source_id").cast(LINE_STRUCT)
    grouped = lines.group_by("user_id", maintain_order=True).agg(
        (pl.col("md").str.join("\n") + "\n").alias("markdown"), struct.alias("lines")
    )
    cohorts = users.select("user_id", pl.col("cohort").cast(pl.String))
    return cohorts.join(grouped, on="user_id", how="left", maintain_order="left").select(
        documents_frame([]).columns
    )


def render_documents_frame(
    users: pl.DataFrame,
    sales: pl.DataFrame,
    behaviour: pl.DataFrame,
    chat: pl.DataFrame,
    layout: SalesLayout | None = None,
    batch_users: int = RENDER_BATCH_USERS,
) -> pl.DataFrame:
    """The cohort's documents (`documents_frame`'s schema), one per user in id order; events
    of users not in `users` are left out. Rendered a batch of users at a time so only one
    batch's text columns live at once."""
    layout = layout or SalesLayout()
    users = users.sort("user_id")
    frames = [documents_frame([])]
    for start in range(0, users.height, batch_users):
        batch = users.slice(start, batch_users)
        ids = batch["user_id"].implode()
        mine = pl.col("user_id").is_in(ids)
        frames.append(
            _render_batch(
                batch, sales.filter(mine), behaviour.filter(mine), chat.filter(mine), layout
            )
        )
    return pl.concat(frames)
