"""Typed validation of source rows: each row is accepted (typed) or rejected with a reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from profiling_assets.core.contract import (
    MAX_MESSAGE_CHARS,
    MAX_PLAUSIBLE_AMOUNT,
    SOURCE_TABLES,
    SourceContractError,
    TableContract,
)

REJECTED_SCHEMA = {
    "cohort": pl.String,
    "table_name": pl.String,
    "row_key": pl.String,
    "raw_row": pl.String,
    "reason": pl.String,
}

_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d")
_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
)
_ROW = "__row"
_REASON = "__reason"


@dataclass(frozen=True)
class ValidationResult:
    accepted: pl.DataFrame
    rejected: pl.DataFrame
    num_read: int
    num_nulled: int  # optional values that could not be parsed and were set to null
    num_truncated: int


def check_columns(table: str, columns: list[str]) -> None:
    """A missing required column is a clear error that names the table and the column."""
    contract = SOURCE_TABLES[table]
    missing = [c for c in contract.required if c not in columns]
    if missing:
        raise SourceContractError(
            f"source table {table!r} lacks required column(s) {', '.join(missing)}"
            f" (has: {', '.join(columns) or 'none'})"
        )


def _as_text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String, strict=False).str.strip_chars()


def _parse_temporal(column: str, dtype: pl.DataType, source: pl.DataType) -> pl.Expr:
    if source.is_temporal():
        return pl.col(column).cast(dtype, strict=False)
    text = _as_text(column)
    formats = _DATE_FORMATS if dtype == pl.Date else _DATETIME_FORMATS + _DATE_FORMATS
    attempts = [
        text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True) for fmt in formats
    ]
    parsed = pl.coalesce(attempts)
    return parsed.cast(dtype, strict=False)


def _typed(column: str, dtype: pl.DataType, source: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return _as_text(column).replace("", None)
    if dtype in (pl.Date,) or isinstance(dtype, pl.Datetime):
        return _parse_temporal(column, dtype, source)
    if source == pl.String:
        return _as_text(column).cast(dtype, strict=False)
    return pl.col(column).cast(dtype, strict=False)


def raw_rows_json(df: pl.DataFrame) -> pl.Series:
    columns = [c for c in df.columns if not c.startswith("__")]
    rows = df.select(columns).cast(pl.String, strict=False).to_dicts()
    return pl.Series("raw_row", [json.dumps(r, ensure_ascii=False) for r in rows], pl.String)


def validate_table(
    table: str,
    raw: pl.DataFrame,
    cohort: str,
    today: date,
    known_user_ids: set[str] | None = None,
    reject_reason: str | None = None,
) -> ValidationResult:
    """Cast `raw` to the contract; rows breaking a rule go to the rejected frame with a reason.

    Rules, first failure wins: required value missing or unparseable, date in the future,
    implausible amount, unknown user, duplicate id (exact copies keep one; conflicting copies
    are all rejected, since which one is right cannot be known). `reject_reason`, when given,
    rejects every row that passes the rules with that reason (rows of no cohort).
    """
    contract: TableContract = SOURCE_TABLES[table]
    check_columns(table, raw.columns)
    df = raw.with_row_index(_ROW)
    for column in contract.names:
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String).alias(column))

    source_text = [_as_text(c).alias(f"__src_{c}") for c in contract.names]
    typed_exprs = [
        _typed(c.name, _dtype(c.dtype), df.schema[c.name]).alias(c.name) for c in contract.columns
    ]
    typed = df.select(pl.col(_ROW), *source_text).with_columns(df.select(typed_exprs))

    reasons: list[pl.Expr] = []
    for column in contract.required:
        given = _given(f"__src_{column}")
        reasons.append(pl.when(~given).then(pl.lit(f"必填字段 {column} 为空")))
        reasons.append(
            pl.when(given & pl.col(column).is_null()).then(
                pl.lit(f"字段 {column} 无法解析为{_dtype_name(contract, column)}")
            )
        )
    end_of_today = datetime.combine(today, datetime.max.time())
    for c in contract.columns:
        if c.dtype == pl.Date:
            future_day = pl.col(c.name) > today
            reasons.append(pl.when(future_day).then(pl.lit(f"字段 {c.name} 是未来日期")))
        elif isinstance(c.dtype, pl.Datetime):
            future = pl.col(c.name) > end_of_today
            reasons.append(pl.when(future).then(pl.lit(f"字段 {c.name} 是未来时间")))
    if "amount" in contract.names:
        implausible = (pl.col("amount") < 0) | (pl.col("amount") > MAX_PLAUSIBLE_AMOUNT)
        reasons.append(
            pl.when(implausible).then(pl.lit(f"金额超出合理范围（0–{MAX_PLAUSIBLE_AMOUNT:.0f}元）"))
        )
    if "age" in contract.names:
        typed = typed.with_columns(
            pl.when(pl.col("age").is_between(0, 120)).then(pl.col("age")).alias("age")
        )
    if known_user_ids is not None and table != "users":
        known = pl.Series(list(known_user_ids), dtype=pl.String)
        unknown = pl.col("user_id").is_not_null() & ~pl.col("user_id").is_in(known)
        reasons.append(pl.when(unknown).then(pl.lit("user_id 不属于本批次的已知用户")))
    if reject_reason is not None:
        reasons.append(pl.lit(reject_reason, pl.String))

    checked = typed.with_columns(pl.coalesce(reasons).alias(_REASON))
    checked = _reject_duplicates(checked, contract.key, contract.names)

    optional = [c.name for c in contract.columns if not c.required]
    num_nulled = sum(
        checked.select((_given(f"__src_{c}") & pl.col(c).is_null()).sum()).item() for c in optional
    )
    num_truncated = 0
    if "message" in contract.names:
        too_long = checked["message"].str.len_chars() > MAX_MESSAGE_CHARS
        num_truncated = int(too_long.sum())
        checked = checked.with_columns(pl.col("message").str.slice(0, MAX_MESSAGE_CHARS))

    bad = checked.filter(pl.col(_REASON).is_not_null())
    raw_bad = df.join(bad.select(_ROW, _REASON), on=_ROW, how="inner").sort(_ROW)
    rejected = pl.DataFrame(
        {
            "cohort": [cohort] * raw_bad.height,
            "table_name": [table] * raw_bad.height,
            "row_key": raw_bad[contract.key].cast(pl.String, strict=False),
            "raw_row": raw_rows_json(raw_bad),
            "reason": raw_bad[_REASON],
        },
        schema=REJECTED_SCHEMA,
    )
    accepted = (
        checked.filter(pl.col(_REASON).is_null())
        .sort(_ROW)
        .select(contract.names)
        .with_columns(pl.lit(cohort, pl.String).alias("cohort"))
    )
    return ValidationResult(accepted, rejected, raw.height, num_nulled, num_truncated)


def _dtype_name(contract: TableContract, column: str) -> str:
    dtype = next(c.dtype for c in contract.columns if c.name == column)
    names = {pl.Date: "日期", pl.Float64: "数字", pl.Int64: "整数", pl.String: "文本"}
    return "时间" if isinstance(dtype, pl.Datetime) else names.get(dtype, str(dtype))


def _given(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & (pl.col(column) != "")


def _dtype(dtype: type[pl.DataType] | pl.DataType) -> pl.DataType:
    return dtype if isinstance(dtype, pl.DataType) else dtype()


def _reject_duplicates(df: pl.DataFrame, key: str, content: list[str]) -> pl.DataFrame:
    """Exact copies keep their first row; copies that differ are all rejected."""
    # Only rows still valid compete: a rejected copy must not turn its valid twin into a conflict.
    dup_key = pl.when(pl.col(_REASON).is_null()).then(pl.col(key))
    df = df.with_columns(dup_key.alias("__dup_key"))
    in_group = pl.col("__dup_key").is_not_null()
    reason = (
        pl.when(in_group & (pl.struct(content).n_unique().over("__dup_key") > 1))
        .then(pl.lit(f"{key} 重复且内容不同"))
        .when(in_group & (pl.col(_ROW) != pl.col(_ROW).min().over("__dup_key")))
        .then(pl.lit(f"{key} 重复（完全相同的记录，保留第一条）"))
        .otherwise(pl.col(_REASON))
    )
    return df.with_columns(reason.alias(_REASON)).drop("__dup_key")
