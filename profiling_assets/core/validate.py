"""Typed validation of source rows: each row is accepted (typed) or rejected with a reason.

Dates and amounts are read as Chinese exports write them (`2024/5/5 10:00`, `2024年5月5日`,
Excel serial numbers, `¥12,800.00`, full-width digits). Personal data is masked here, at
intake: the accepted rows and the rejected rows hold masked text (ids that are personal data
become stable pseudonyms), and a rejected row keeps where it came from and the SHA-256 of its
original line, so it can still be found and fixed at the source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from profiling_assets.core.contract import (
    LINE_COLUMN,
    MAX_MESSAGE_CHARS,
    MAX_PLAUSIBLE_AMOUNT,
    MERGED_COLUMN,
    SHA_COLUMN,
    SOURCE_COLUMN,
    SOURCE_TABLES,
    UNSTITCHED_COLUMN,
    SourceContractError,
    TableContract,
)
from profiling_assets.core.pii import mask_pii, mask_pii_series, pseudonymise_id_series

REJECTED_SCHEMA = {
    "cohort": pl.String,
    "table_name": pl.String,
    "row_key": pl.String,
    "raw_row": pl.String,
    "reason": pl.String,
    "source": pl.String,  # file (CSV, Excel sheet, Parquet) or table the row was read from
    "source_line": pl.Int64,  # first line of its record in a CSV / its Excel row; else null
    "source_sha256": pl.String,  # hex SHA-256 of the original line bytes (or of the raw row)
}

# Dates: y-m-d with -, / or . (or 年月日), one- or two-digit month and day, an optional time.
_YMD = (
    r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})"
    r"(?:[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.\d+)?)?)?$"
)
_COMPACT_DATE = r"^\d{8}$"
# Excel serial day numbers (1899-12-30 is day 0): five digits cover 1927 to 2173, and a bare
# five-digit number in a date column means nothing else.
_EXCEL_SERIAL = r"^\d{5}(?:\.\d+)?$"
_EXCEL_EPOCH = datetime(1899, 12, 30)
_CURRENCY = r"(?i)^([+-]?)\s*(?:¥|rmb|cny)\s*"
_YUAN = r"\s*元$"
_GROUPED = r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"
_ROW = "__row"
_REASON = "__reason"


@dataclass(frozen=True)
class ValidationResult:
    accepted: pl.DataFrame
    rejected: pl.DataFrame
    num_read: int
    num_nulled: int  # optional values that could not be parsed and were set to null
    num_truncated: int
    num_merged: int = 0  # source rows folded into another row of the same person (users)


def check_columns(table: str, columns: list[str], mapping: Mapping[str, str] | None = None) -> None:
    """A missing required column is a clear error that names the table and every required
    column missing, and the spec's column mapping that was tried (or how to write one)."""
    contract = SOURCE_TABLES[table]
    missing = [c for c in contract.required if c not in columns]
    if not missing:
        return
    visible = [c for c in columns if not c.startswith("__")]
    if mapping:
        tried = ", ".join(
            f"{c} = {name!r}{'' if c not in missing else ' (not in the source)'}"
            for c, name in mapping.items()
        )
        hint = f"; column mapping tried: [columns.{table}] {tried}"
    else:
        hint = (
            f"; no column mapping for {table!r}: name the company's columns in the spec, "
            f'e.g. [columns.{table}] {missing[0]} = "…"'
        )
    raise SourceContractError(
        f"source table {table!r} lacks required column(s) {', '.join(missing)}"
        f" (has: {', '.join(visible) or 'none'}){hint}"
    )


def _as_text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String, strict=False).str.strip_chars()


def _normalized(text: pl.Expr) -> pl.Expr:
    """Full-width digits and signs as ASCII (NFKC), outer spaces gone: for numbers and dates."""
    return text.str.normalize("NFKC").str.strip_chars()


def parse_datetime_text(text: pl.Expr) -> pl.Expr:
    """Text → Datetime("us"), null when it is no date: ISO, `2024/5/5 10:00`, `2024.01.05`,
    `2024年5月5日 10:00`, `20240105`, Excel serials (`45417`, `45417.4166`, to the second)."""
    norm = _normalized(text)
    norm = norm.str.replace_all(r"[年月]", "-").str.replace_all("日", " ")
    norm = norm.str.replace_all(r"\s+", " ").str.strip_chars()
    parts = norm.str.extract_groups(_YMD)

    def part(index: int, default: str | None = None) -> pl.Expr:
        value = parts.struct.field(str(index))
        return (value.fill_null(default) if default else value).str.zfill(2)

    canonical = pl.concat_str([part(1), part(2), part(3)], separator="-") + pl.concat_str(
        [pl.lit(" "), pl.concat_str([part(4, "0"), part(5, "0"), part(6, "0")], separator=":")]
    )
    ymd = canonical.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False, exact=True)
    compact = pl.when(norm.str.contains(_COMPACT_DATE)).then(
        norm.str.strptime(pl.Datetime("us"), "%Y%m%d", strict=False, exact=True)
    )
    seconds = (norm.cast(pl.Float64, strict=False) * 86_400).round(0).cast(pl.Int64, strict=False)
    serial = pl.when(norm.str.contains(_EXCEL_SERIAL)).then(
        pl.lit(_EXCEL_EPOCH, pl.Datetime("us")) + pl.duration(seconds=seconds)
    )
    return pl.coalesce(ymd, compact, serial)


def parse_amount_text(text: pl.Expr) -> pl.Expr:
    """Text → Float64: `¥`/`￥`/`RMB` before or `元` after, full-width digits, and thousands
    separators (`12,800.00`, `¥7,800`, `219,900`: a Chinese export groups thousands with a
    comma; a decimal comma such as `12,80` stays unparsed)."""
    norm = _normalized(text)
    bare = norm.str.replace(_CURRENCY, "${1}").str.replace(_YUAN, "").str.strip_chars()
    plain = pl.when(bare.str.contains(_GROUPED)).then(bare.str.replace_all(",", "")).otherwise(bare)
    return plain.cast(pl.Float64, strict=False)


def _typed(column: str, dtype: pl.DataType, source: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return _as_text(column).replace("", None)
    if dtype in (pl.Date,) or isinstance(dtype, pl.Datetime):
        if source.is_temporal():
            return pl.col(column).cast(dtype, strict=False)
        return parse_datetime_text(_as_text(column)).cast(dtype, strict=False)
    if source == pl.String and dtype == pl.Float64:
        return parse_amount_text(_as_text(column))
    if source == pl.String:
        return _normalized(_as_text(column)).cast(dtype, strict=False)
    return pl.col(column).cast(dtype, strict=False)


def raw_rows_json(df: pl.DataFrame, mask: bool = False) -> pl.Series:
    """Each row as JSON text (its own columns, not the `__` bookkeeping); `mask`: every value
    through `mask_pii` first, as `rejected_rows` stores it."""
    columns = [c for c in df.columns if not c.startswith("__")]
    rows = df.select(columns).cast(pl.String, strict=False).to_dicts()
    if mask:
        rows = [{k: v if v is None else mask_pii(v) for k, v in r.items()} for r in rows]
    return pl.Series("raw_row", [json.dumps(r, ensure_ascii=False) for r in rows], pl.String)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def validate_table(
    table: str,
    raw: pl.DataFrame,
    cohort: str,
    today: date,
    known_user_ids: set[str] | None = None,
    reject_reason: str | None = None,
    max_amount: float = MAX_PLAUSIBLE_AMOUNT,
) -> ValidationResult:
    """Cast `raw` to the contract; rows breaking a rule go to the rejected frame with a reason.

    Rules, first failure wins: required value missing or unparseable, date in the future,
    implausible amount, unknown user, duplicate id (exact copies keep one; conflicting copies
    are all rejected, since which one is right cannot be known). `reject_reason`, when given,
    rejects every row that passes the rules with that reason (rows of no cohort).
    `max_amount` is the spec's `[intake] max_amount` (a car is not a facial).

    Ids holding personal data are pseudonymised before any rule (the same id gives the same
    pseudonym, so joins and duplicates work as before); other text is masked after the rules.
    `raw` may carry provenance columns (`__source`, `__line`, `__sha256`) for rejected rows.
    """
    contract: TableContract = SOURCE_TABLES[table]
    check_columns(table, raw.columns)
    df = raw.with_row_index(_ROW)
    for column in contract.names:
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String).alias(column))
    typed = _typed_rows(df, contract)
    reasons: list[pl.Expr] = []
    if UNSTITCHED_COLUMN in df.columns:  # identity stitching found no person for the row
        typed = typed.with_columns(df.select(UNSTITCHED_COLUMN))
        reasons.append(pl.col(UNSTITCHED_COLUMN))
    reasons += _rule_reasons(contract, today, max_amount)
    if "age" in contract.names:
        typed = typed.with_columns(
            pl.when(pl.col("age").is_between(0, 120)).then(pl.col("age")).alias("age")
        )
    reasons += _batch_reasons(table, known_user_ids, reject_reason)
    checked = typed.with_columns(pl.coalesce(reasons).alias(_REASON))
    checked = _reject_duplicates(checked, contract.key, contract.names)
    checked, num_nulled, num_truncated = _finished(checked, contract)

    bad = checked.filter(pl.col(_REASON).is_not_null())
    raw_bad = df.join(bad.select(_ROW, _REASON), on=_ROW, how="inner").sort(_ROW)
    rejected = _rejected_rows(raw_bad, table, cohort, contract.key)
    accepted = (
        checked.filter(pl.col(_REASON).is_null())
        .sort(_ROW)
        .select(contract.names)
        .with_columns(pl.lit(cohort, pl.String).alias("cohort"))
    )
    # Users rows of one stitched person arrive folded into one; they were read all the same.
    merged = int(raw[MERGED_COLUMN].sum()) if MERGED_COLUMN in raw.columns else 0
    return ValidationResult(
        accepted, rejected, raw.height + merged, num_nulled, num_truncated, merged
    )


def _text_columns(contract: TableContract) -> set[str]:
    return {c.name for c in contract.columns if _dtype(c.dtype) == pl.String}


def _id_columns(contract: TableContract) -> list[str]:
    """The row's own id and its user id: pseudonymised, never masked."""
    return [c for c in dict.fromkeys((contract.key, "user_id")) if c in contract.names]


def _given_in(contract: TableContract, column: str) -> pl.Expr:
    """Whether the source gave a value. A text column's typed value is its stripped source
    text, so that is read itself; a column typed otherwise reads its kept source text."""
    if column in _text_columns(contract):
        return pl.col(column).is_not_null()
    return _given(f"__src_{column}")


def _typed_rows(df: pl.DataFrame, contract: TableContract) -> pl.DataFrame:
    """The row index, the contract's columns typed (ids pseudonymised) and, of columns typed
    other than text, the source text (a large export's messages are not copied twice)."""
    text_columns = _text_columns(contract)
    source_text = [_as_text(c).alias(f"__src_{c}") for c in contract.names if c not in text_columns]
    typed_exprs = [
        _typed(c.name, _dtype(c.dtype), df.schema[c.name]).alias(c.name) for c in contract.columns
    ]
    typed = df.select(pl.col(_ROW), *source_text).with_columns(df.select(typed_exprs))
    return typed.with_columns(
        pseudonymise_id_series(typed[c]).alias(c) for c in _id_columns(contract)
    )


def _rule_reasons(contract: TableContract, today: date, max_amount: float) -> list[pl.Expr]:
    """The contract's own rules, in the order they win: a required value missing or
    unparseable, a date or time in the future, an implausible amount."""
    reasons: list[pl.Expr] = []
    for column in contract.required:
        given = _given_in(contract, column)
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
        implausible = (pl.col("amount") < 0) | (pl.col("amount") > max_amount)
        reasons.append(
            pl.when(implausible).then(
                pl.lit(f"金额超出合理范围（0–{max_amount:.0f}，见规格 [intake] max_amount）")
            )
        )
    return reasons


def _batch_reasons(
    table: str, known_user_ids: set[str] | None, reject_reason: str | None
) -> list[pl.Expr]:
    """The rules of the batch, after the contract's: a user not among its users, then the
    reason every remaining row is rejected for (rows of no cohort)."""
    reasons: list[pl.Expr] = []
    if known_user_ids is not None and table != "users":
        known = pl.Series(list(known_user_ids), dtype=pl.String)
        unknown = pl.col("user_id").is_not_null() & ~pl.col("user_id").is_in(known)
        reasons.append(pl.when(unknown).then(pl.lit("user_id 不属于本批次的已知用户")))
    if reject_reason is not None:
        reasons.append(pl.lit(reject_reason, pl.String))
    return reasons


def _finished(checked: pl.DataFrame, contract: TableContract) -> tuple[pl.DataFrame, int, int]:
    """(rows with text masked and messages cut, optional values that could not be parsed,
    messages cut)."""
    text_columns = _text_columns(contract)
    optional = [c.name for c in contract.columns if not c.required]
    num_nulled = sum(
        checked.select((_given_in(contract, c) & pl.col(c).is_null()).sum()).item()
        for c in optional
        if c not in text_columns
    )
    # Masked before the cut: a phone number cut in half would no longer be recognised.
    ids = _id_columns(contract)
    texts = [c.name for c in contract.columns if c.dtype == pl.String and c.name not in ids]
    checked = checked.with_columns(mask_pii_series(checked[c]).alias(c) for c in texts)
    num_truncated = 0
    if "message" in contract.names:
        too_long = checked["message"].str.len_chars() > MAX_MESSAGE_CHARS
        num_truncated = int(too_long.sum())
        checked = checked.with_columns(pl.col("message").str.slice(0, MAX_MESSAGE_CHARS))
    return checked, num_nulled, num_truncated


def _rejected_rows(raw_bad: pl.DataFrame, table: str, cohort: str, key: str) -> pl.DataFrame:
    """Rejected rows as stored: masked text, where they came from, the original's SHA-256."""
    n = raw_bad.height

    def given(column: str, dtype: pl.DataType) -> pl.Series:
        if column in raw_bad.columns:
            return raw_bad[column].cast(dtype, strict=False)
        return pl.Series(column, [None] * n, dtype)

    # A row from a table (not a line of a file) is fingerprinted by its unmasked JSON text.
    fingerprints = [_sha256_text(text) for text in raw_rows_json(raw_bad)]
    sha = given(SHA_COLUMN, pl.String).fill_null(pl.Series(fingerprints, dtype=pl.String))
    return pl.DataFrame(
        {
            "cohort": [cohort] * n,
            "table_name": [table] * n,
            "row_key": pseudonymise_id_series(raw_bad[key].cast(pl.String, strict=False)),
            "raw_row": raw_rows_json(raw_bad, mask=True),
            "reason": raw_bad[_REASON],
            "source": given(SOURCE_COLUMN, pl.String).fill_null(table),
            "source_line": given(LINE_COLUMN, pl.Int64),
            "source_sha256": sha,
        },
        schema=REJECTED_SCHEMA,
    )


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
