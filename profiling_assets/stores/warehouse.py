"""The warehouse: one table per asset, rows keyed by cohort, replaced in one transaction.

Every read and write takes the table's entry in the registry (`tables.py`): a table not
written yet reads as an empty frame with the entry's columns.

The connection decides where rows go: a DuckDB file (the default), or a Parquet warehouse under
the storage URI (`parquet_warehouse.py`), where each write edits a working copy of the cohorts
it touches with the same SQL and then replaces their files (`edit_table`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import duckdb
import polars as pl

from profiling_assets.stores.catalog import catalog_type
from profiling_assets.stores.names import safe_cohort, safe_table
from profiling_assets.stores.parquet_warehouse import bound_warehouse
from profiling_assets.stores.tables import TABLES, StoredTable


def table_exists(con: duckdb.DuckDBPyConnection, table: StoredTable) -> bool:
    """Whether `table` (or, for `latest_profiles`, the view) has been created."""
    return _exists(con, table.name)


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return catalog_type(con, safe_table(name)) is not None


def _ensure_table(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> None:
    """Create from the frame's schema; add columns a newer version of the asset writes."""
    con.register("__incoming", df.to_arrow())
    try:
        if not _exists(con, table):
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM __incoming LIMIT 0')
            return
        existing = {
            row[0]
            for row in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall()
        }
        incoming = con.execute("DESCRIBE SELECT * FROM __incoming").fetchall()
        for name, dtype, *_ in incoming:
            if name not in existing:
                con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{safe_table(name)}" {dtype}')
    finally:
        con.unregister("__incoming")


@contextmanager
def edit_table(
    con: duckdb.DuckDBPyConnection,
    stored: StoredTable,
    cohorts: Callable[[], Collection[str]] | None,
) -> Iterator[str]:
    """The name to run a write's SQL against: the table itself in a DuckDB file; in a Parquet
    warehouse a working table holding the rows of the cohorts `cohorts()` names (None: the
    whole table), whose files are replaced when the block ends without an error. `cohorts` is
    called only there, so the DuckDB file pays nothing for it."""
    shared = bound_warehouse(con)
    if shared is None:
        yield stored.name
        return
    with shared.edit(con, stored.name, None if cohorts is None else cohorts()) as work:
        yield work


def _frame_cohorts(df: pl.DataFrame) -> set[str]:
    if "cohort" not in df.columns:
        return set()
    return {str(c) for c in df["cohort"].unique().to_list() if c is not None}


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> None:
    if df.height:
        con.register("__incoming", df.to_arrow())
        con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM __incoming')
        con.unregister("__incoming")


def replace_rows(
    con: duckdb.DuckDBPyConnection,
    stored: StoredTable,
    df: pl.DataFrame,
    where: dict[str, str],
) -> int:
    """Delete the rows matching `where` and insert `df`, atomically: re-runs are idempotent."""
    if "cohort" in where:
        safe_cohort(where["cohort"])
    columns = [safe_table(c) for c in where]
    condition = " AND ".join(f'"{c}" = ?' for c in columns) or "TRUE"
    # Rows of one cohort (and any the frame brings), or the whole table without a cohort.
    cohorts = (lambda: {where["cohort"], *_frame_cohorts(df)}) if "cohort" in where else None
    with edit_table(con, stored, cohorts) as target, _transaction(con):
        _ensure_table(con, target, df)
        con.execute(f'DELETE FROM "{target}" WHERE {condition}', list(where.values()))
        _insert(con, target, df)
    return df.height


def replace_partition(
    con: duckdb.DuckDBPyConnection, table: StoredTable, cohort: str, df: pl.DataFrame
) -> int:
    return replace_rows(con, table, df, {"cohort": cohort})


def read_partition(
    con: duckdb.DuckDBPyConnection,
    stored: StoredTable,
    cohort: str,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """The cohort's rows (of `columns`, or all); before the table is written, no rows with
    the entry's columns."""
    table = stored.name
    if not _exists(con, table):
        return stored.empty(columns)
    select = ", ".join(f'"{safe_table(c)}"' for c in columns) if columns else "*"
    query = f'SELECT {select} FROM "{table}" WHERE cohort = ?'
    return con.sql(query, params=[safe_cohort(cohort)]).pl()


def append_rows(con: duckdb.DuckDBPyConnection, stored: StoredTable, df: pl.DataFrame) -> int:
    """Add history rows; a stored row with the same values of the entry's key is replaced,
    so a retried write, or two runs doing the same work at once, never leaves a duplicate."""
    table, key = stored.name, list(stored.key)
    same_key = " AND ".join(f't."{safe_table(c)}" = i."{c}"' for c in key)

    def cohorts() -> set[str]:
        # The frame's cohorts, and any other holding one of its keys (a user whose cohort
        # changed): the whole table stays free of duplicates, as in a DuckDB file.
        return _frame_cohorts(df) | _cohorts_holding(con, table, df.select(key), same_key)

    touched = cohorts if "cohort" in df.columns else None
    if df.height == 0:
        with edit_table(con, stored, touched) as target:
            _ensure_table(con, target, df)  # an empty history still exists for readers
        return 0
    with edit_table(con, stored, touched) as target, _transaction(con):
        _ensure_table(con, target, df)
        con.register("__keys", df.select(key).unique().to_arrow())
        con.execute(f'DELETE FROM "{target}" t USING __keys i WHERE {same_key}')
        con.unregister("__keys")
        _insert(con, target, df)
    return df.height


def _cohorts_holding(
    con: duckdb.DuckDBPyConnection, table: str, keys: pl.DataFrame, same_key: str
) -> set[str]:
    if keys.height == 0 or not _exists(con, table):
        return set()
    con.register("__keys", keys.unique().to_arrow())
    try:
        found = con.execute(
            f'SELECT DISTINCT CAST(t.cohort AS VARCHAR) FROM "{table}" t, __keys i WHERE {same_key}'
        ).fetchall()
    finally:
        con.unregister("__keys")
    return {r[0] for r in found if r[0] is not None}


def partition_shape(
    con: duckdb.DuckDBPyConnection, stored: StoredTable, cohort: str | None = None
) -> tuple[int, list[tuple[str, str]]]:
    """(rows of the cohort, or of the whole table without one; [(column, DuckDB type)]) as
    stored, so the UI shows the table a reader finds, not the frame a step meant to write.
    (0, []) when the table does not exist yet."""
    table = stored.name
    if not _exists(con, table):
        return 0, []
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if cohort is None:
        rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
    else:
        query = f'SELECT count(*) FROM "{table}" WHERE cohort = ?'
        rows = con.execute(query, [safe_cohort(cohort)]).fetchall()[0][0]
    return int(rows), [(str(name), str(dtype)) for name, dtype in columns]


def read_table(con: duckdb.DuckDBPyConnection, stored: StoredTable) -> pl.DataFrame:
    """Every row of a table without cohorts (the identity tables), cast to the entry's
    columns; before the table is written, no rows with those columns."""
    if not _exists(con, stored.name):
        return stored.empty()
    select = ", ".join(f'"{c}"' for c in stored.columns)
    return con.sql(f'SELECT {select} FROM "{stored.name}"').pl().cast(dict(stored.schema))  # type: ignore[arg-type]


def create_latest_profiles_view(con: duckdb.DuckDBPyConnection, llm_identity: str) -> bool:
    """`latest_profiles`: each user's newest profile from one model, over every cohort, for
    the teams downstream (SQL, `profiling-assets export`); `user_profiles` keeps the history.
    A view's definition cannot take bound parameters, so the identity is a quoted literal.
    False (nothing created) while `user_profiles` does not exist."""
    if not table_exists(con, TABLES.profiles):
        return False
    _latest_profiles_view(con, llm_identity)
    if (shared := bound_warehouse(con)) is not None:
        shared.save_view(TABLES.latest_profiles.name, {"llm_identity": llm_identity})
    return True


def restore_views(con: duckdb.DuckDBPyConnection) -> None:
    """In a Parquet warehouse's fresh connection, the views earlier connections created (a
    DuckDB file keeps its own)."""
    shared = bound_warehouse(con)
    saved = shared.saved_view(TABLES.latest_profiles.name) if shared else None
    if saved and table_exists(con, TABLES.profiles):
        _latest_profiles_view(con, saved["llm_identity"])


def _latest_profiles_view(con: duckdb.DuckDBPyConnection, llm_identity: str) -> None:
    literal = "'" + llm_identity.replace("'", "''") + "'"
    con.execute(
        f'CREATE OR REPLACE VIEW "{TABLES.latest_profiles.name}" AS '
        "SELECT * EXCLUDE (_newest) FROM ("
        "  SELECT *, row_number() OVER ("
        "    PARTITION BY user_id ORDER BY created_at DESC, run_id DESC) AS _newest"
        f"  FROM {TABLES.profiles.name} WHERE llm_identity = {literal}"
        ") WHERE _newest = 1"
    )
