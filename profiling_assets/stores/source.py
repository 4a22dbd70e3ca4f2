"""Read the source tables (a DuckDB file or a folder of Parquet/CSV) one cohort at a time.

DuckDB is the query engine for every kind of source, so the cohort filter runs where the data
is. Cohort of a user: `users.cohort` when set and valid, else the signup month `YYYY-MM`;
rows that belong to no valid cohort (unknown user, unparseable signup date, bad cohort name)
are read by the partition `unassigned`, whose run rejects them with a reason, so every source
row lands in exactly one partition.
"""

from __future__ import annotations

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
            # all_varchar: types are the validator's job, so one bad cell rejects one row only.
            con.read_csv(
                str(csv), header=True, all_varchar=True, strict_mode=False, null_padding=True
            ).create_view(safe_table(table))


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
    if _has_orphans(con) and UNASSIGNED_COHORT not in cohorts:
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
