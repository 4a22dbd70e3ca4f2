"""Read the source tables (a DuckDB file or a folder of Parquet/CSV) one cohort at a time.

DuckDB is the query engine for every kind of source, so the cohort filter runs where the data
is. Cohort of a user: `users.cohort` when set and valid, else the signup month `YYYY-MM`;
rows that belong to no valid cohort (unknown user, unparseable signup date, bad cohort name)
are read by the partition `unassigned`, whose run rejects them with a reason, so every source
row lands in exactly one partition. CSV lines that are not well-formed (too many fields, an
unterminated quote) are rejected by `unassigned` too, with the reader's reason.
"""

from __future__ import annotations

import csv as _csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from profiling_assets.core.contract import SOURCE_TABLES, TRUTH_TABLE, SourceContractError
from profiling_assets.core.validate import check_columns
from profiling_assets.stores.names import safe_cohort, safe_table

UNASSIGNED_COHORT = "unassigned"
_COHORT_KEY_SQL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@contextmanager
def open_source(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection in which the source tables exist as tables or views."""
    if not path.exists():
        raise SourceContractError(f"source {path} does not exist")
    if path.is_dir():
        con = duckdb.connect()
        try:
            _register_folder(con, path)
            yield con
        finally:
            con.close()
        return
    con = duckdb.connect(str(path), read_only=True)
    try:
        yield con
    finally:
        con.close()


def _register_folder(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    for table in (*SOURCE_TABLES, TRUTH_TABLE):
        parquet, csv = folder / f"{table}.parquet", folder / f"{table}.csv"
        # Views from relations: DuckDB cannot bind a file path as a parameter of CREATE VIEW.
        if parquet.exists():
            con.read_parquet(str(parquet)).create_view(safe_table(table))
        elif csv.exists():
            _load_csv(con, table, csv)


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(_csv.reader(f), None)
    if not header:
        raise SourceContractError(f"{path.name} has no header line")
    return header


def _load_csv(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> None:
    """Load one CSV as a table; lines that are not well-formed CSV go to a rejects table.

    The dialect is fixed (comma, RFC 4180 quotes) rather than sniffed: one bad line must not
    change how every other line is read. Every column is text (types are the validator's job,
    so one bad cell rejects one row only); a short line is padded with nulls and judged by the
    validator; a line with too many fields or an unterminated quote is malformed and kept,
    with the reader's reason, in `__malformed_<table>`. Loaded once as a table, so the rejects
    are collected exactly once. Quoted fields may hold line breaks (`parallel=False`).
    """
    name = safe_table(table)
    columns = dict.fromkeys(_csv_header(path), "VARCHAR")
    con.read_csv(
        str(path),
        header=True,
        auto_detect=False,
        columns=columns,
        delimiter=",",
        quotechar='"',
        escapechar='"',
        strict_mode=True,
        null_padding=True,
        parallel=False,
        ignore_errors=True,
        store_rejects=True,
        rejects_table=f"__rejects_{name}",
        rejects_scan=f"__scans_{name}",
    ).create(name)
    con.execute(
        f'CREATE TABLE "__malformed_{name}" AS SELECT line, any_value(csv_line) AS csv_line, '
        "string_agg(DISTINCT error_message, '; ') AS reason "
        f'FROM "__rejects_{name}" GROUP BY line ORDER BY line'
    )
    _check_lines_accounted(con, name, path, list(columns))


def _check_lines_accounted(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, columns: list[str]
) -> None:
    """Every physical line is in a row or a malformed line, or the source is refused.

    DuckDB ends a file whose last quote never closes by padding that row and dropping the
    lines after it without a reject; counting lines turns that silent loss into an error.
    """
    lines = path.read_bytes().split(b"\n")[1:]
    if lines and lines[-1] == b"":
        lines.pop()
    blank = sum(1 for line in lines if not line.strip())
    text = (
        "concat_ws('', " + ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in columns) + ")"
    )
    spanned = f"1 + length({text}) - length(replace({text}, chr(10), ''))"
    read = con.execute(f'SELECT coalesce(sum({spanned}), 0) FROM "{name}"').fetchall()[0][0]
    rejected = con.execute(
        "SELECT coalesce(sum(1 + length(csv_line) - length(replace(csv_line, chr(10), ''))), 0) "
        f'FROM "__malformed_{name}"'
    ).fetchall()[0][0]
    if read + rejected + blank < len(lines):
        raise SourceContractError(
            f"{path.name}: {len(lines)} data lines, but only {read + rejected} were read or "
            "rejected; a quote that is never closed near the end of the file hides the lines "
            "after it — fix the quoting and run again"
        )


def malformed_lines(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    """(line, csv_line, reason) of the CSV lines of `table` that could not be read as rows;
    empty for DuckDB and Parquet sources. They belong to no cohort: `unassigned` rejects them."""
    name = f"__malformed_{safe_table(table)}"
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    if not found[0][0]:
        return pl.DataFrame(schema={"line": pl.Int64, "csv_line": pl.String, "reason": pl.String})
    return con.sql(f'SELECT line, csv_line, reason FROM "{name}" ORDER BY line').pl()


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    try:
        rows = con.execute(f'DESCRIBE "{safe_table(table)}"').fetchall()
    except duckdb.CatalogException as error:
        raise SourceContractError(f"source lacks table {table!r}") from error
    return [r[0] for r in rows]


def check_source(con: duckdb.DuckDBPyConnection) -> None:
    """Every contract table and required column is there, or a clear error names it."""
    for table in SOURCE_TABLES:
        check_columns(table, table_columns(con, table))


def has_truth(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        table_columns(con, TRUTH_TABLE)
    except SourceContractError:
        return False
    return True


def _user_cohorts_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SQL of (user_id, cohort): one row per user id, invalid ones mapped to `unassigned`."""
    month = "strftime(try_cast(signup_date AS DATE), '%Y-%m')"
    given = (
        "nullif(trim(CAST(cohort AS VARCHAR)), '')"
        if "cohort" in table_columns(con, "users")
        else "NULL"
    )
    raw = f"coalesce({given}, {month})"
    checked = (
        f"CASE WHEN regexp_full_match({raw}, '{_COHORT_KEY_SQL}') AND {raw} NOT LIKE '%..%' "
        f"THEN {raw} ELSE '{UNASSIGNED_COHORT}' END"
    )
    return (
        f"SELECT CAST(user_id AS VARCHAR) AS user_id, min({checked}) AS cohort "
        "FROM users GROUP BY 1"
    )


def list_cohorts(con: duckdb.DuckDBPyConnection) -> list[str]:
    check_source(con)
    rows = con.execute(
        f"SELECT DISTINCT coalesce(u.cohort, '{UNASSIGNED_COHORT}') AS cohort "
        f"FROM users r LEFT JOIN ({_user_cohorts_sql(con)}) u "
        "ON CAST(r.user_id AS VARCHAR) = u.user_id ORDER BY 1"
    ).fetchall()
    cohorts = [r[0] for r in rows]
    malformed = any(malformed_lines(con, t).height for t in SOURCE_TABLES)
    if (malformed or _has_orphans(con)) and UNASSIGNED_COHORT not in cohorts:
        cohorts = sorted([*cohorts, UNASSIGNED_COHORT])
    return cohorts


def _has_orphans(con: duckdb.DuckDBPyConnection) -> bool:
    users = _user_cohorts_sql(con)
    for table in ("sales", "behaviour", "chat"):
        found = con.execute(
            f'SELECT count(*) FROM "{table}" e LEFT JOIN ({users}) u '
            "ON CAST(e.user_id AS VARCHAR) = u.user_id WHERE u.user_id IS NULL"
        ).fetchall()
        if found[0][0]:
            return True
    return False


def read_cohort_table(con: duckdb.DuckDBPyConnection, table: str, cohort: str) -> pl.DataFrame:
    """The raw rows of `table` that belong to `cohort`, columns as the source has them."""
    safe_cohort(cohort)
    if table not in (*SOURCE_TABLES, TRUTH_TABLE):
        raise SourceContractError(f"unknown source table {table!r}")
    columns = table_columns(con, table)
    if table in SOURCE_TABLES:
        check_columns(table, columns)
    users = _user_cohorts_sql(con)
    if table == "users":
        query = (
            f"SELECT r.* FROM users r LEFT JOIN ({users}) u "
            "ON CAST(r.user_id AS VARCHAR) = u.user_id "
            f"WHERE coalesce(u.cohort, '{UNASSIGNED_COHORT}') = ?"
        )
    else:
        query = (
            f'SELECT e.* FROM "{table}" e LEFT JOIN ({users}) u '
            "ON CAST(e.user_id AS VARCHAR) = u.user_id "
            f"WHERE coalesce(u.cohort, '{UNASSIGNED_COHORT}') = ?"
        )
    return con.sql(query, params=[cohort]).pl()
