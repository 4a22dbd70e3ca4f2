"""The source contract: the four tables a user brings, their columns and types."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Column:
    name: str
    dtype: type[pl.DataType] | pl.DataType
    required: bool


@dataclass(frozen=True)
class TableContract:
    name: str
    key: str
    columns: tuple[Column, ...]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _contract(
    name: str,
    key: str,
    columns: tuple[str, ...],
    dtypes: tuple[type[pl.DataType] | pl.DataType, ...],
    required: tuple[str, ...],
) -> TableContract:
    """A table's columns in order, their types, and which must be filled."""
    return TableContract(
        name,
        key,
        tuple(Column(c, t, c in required) for c, t in zip(columns, dtypes, strict=True)),
    )


_TIME = pl.Datetime("us")
SOURCE_TABLES: dict[str, TableContract] = {
    contract.name: contract
    for contract in (
        _contract(
            "users",
            key="user_id",
            columns=("user_id", "gender", "age", "city", "signup_date", "cohort"),
            dtypes=(pl.String, pl.String, pl.Int64, pl.String, pl.Date, pl.String),
            required=("user_id", "signup_date"),
        ),
        _contract(
            "sales",
            key="order_id",
            columns=("order_id", "user_id", "item", "category", "amount", "order_date"),
            dtypes=(pl.String, pl.String, pl.String, pl.String, pl.Float64, pl.Date),
            required=("order_id", "user_id", "item", "amount", "order_date"),
        ),
        _contract(
            "behaviour",
            key="event_id",
            columns=("event_id", "user_id", "event_type", "target", "event_time"),
            dtypes=(pl.String, pl.String, pl.String, pl.String, _TIME),
            required=("event_id", "user_id", "event_type", "target", "event_time"),
        ),
        _contract(
            "chat",
            key="message_id",
            columns=("message_id", "user_id", "message", "sent_at", "channel"),
            dtypes=(pl.String, pl.String, pl.String, _TIME, pl.String),
            required=("message_id", "user_id", "message", "sent_at"),
        ),
    )
}

TRUTH_TABLE = "truth"
# Columns of the optional `truth` table (evaluation only), typed as a DuckDB source holds
# them; lists read from a CSV arrive as text and are parsed where they are scored.
TRUTH_TYPES: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "intended_project": pl.String(),
    "spending_level": pl.String(),
    "purchase_intent": pl.String(),
    "concerns": pl.List(pl.String()),
    "tags": pl.List(pl.String()),
    "anomalies": pl.List(pl.String()),
    "signal_ids": pl.List(pl.String()),
}
TRUTH_COLUMNS = tuple(TRUTH_TYPES)
EVENT_TABLES = ("sales", "behaviour", "chat")

# The optional table of id pairs known to belong to one person (a mini-program's phone
# authorisation, a CRM's link of member number and WeChat): read by identity stitching only.
IDENTITIES_TABLE = "identities"
IDENTITY_PAIR_COLUMNS = ("id_type_a", "id_a", "id_type_b", "id_b")
# Evaluation only: the true person of each source row (users rows by their member number).
TRUTH_IDENTITY_TABLE = "truth_identity"
TRUTH_IDENTITY_COLUMNS = ("table_name", "row_key", "person")
# Every table a source may hold: the four, then the optional ones.
ALL_SOURCE_TABLES = (*SOURCE_TABLES, TRUTH_TABLE, IDENTITIES_TABLE, TRUTH_IDENTITY_TABLE)

# Other names a file or an Excel sheet of a table may have (matched case-insensitively): the
# names companies give their exports. A spec cannot rename tables yet, only columns.
TABLE_ALIASES: dict[str, tuple[str, ...]] = {
    "users": ("用户", "客户"),
    "sales": ("订单", "销售"),
    "behaviour": ("behavior", "行为"),
    "chat": ("聊天", "咨询"),
    TRUTH_TABLE: ("标注",),
    IDENTITIES_TABLE: ("身份对照", "id_pairs"),
}


def table_names(table: str) -> tuple[str, ...]:
    """The names a source file or sheet of `table` may have: its own first, then aliases."""
    return (table, *TABLE_ALIASES.get(table, ()))


def contract_columns(table: str) -> tuple[str, ...]:
    """The standard column names of a source table or of `truth`."""
    if table == IDENTITIES_TABLE:
        return IDENTITY_PAIR_COLUMNS
    if table == TRUTH_IDENTITY_TABLE:
        return TRUTH_IDENTITY_COLUMNS
    return TRUTH_COLUMNS if table == TRUTH_TABLE else tuple(SOURCE_TABLES[table].names)


# Where a source row came from, carried beside its columns from the reader to `rejected_rows`
# (the leading "__" keeps them out of the row's own text): the file or table, the first line
# of its record (CSV; Excel: the row, header = 1), and the SHA-256 of its original bytes.
SOURCE_COLUMN = "__source"
LINE_COLUMN = "__line"
SHA_COLUMN = "__sha256"
PROVENANCE_COLUMNS = (SOURCE_COLUMN, LINE_COLUMN, SHA_COLUMN)
# Users rows of one stitched person folded into this one (identity stitching), for the counts.
MERGED_COLUMN = "__merged"
# Why a row has no stitched person (its ids empty, denied or set aside), for rejected_rows.
UNSTITCHED_COLUMN = "__unstitched"

# Amounts above this are treated as a data error, not a purchase (元).
MAX_PLAUSIBLE_AMOUNT = 500_000.0
MAX_MESSAGE_CHARS = 2_000


class SourceContractError(ValueError):
    """The source does not meet the contract; the message names the table and column."""
