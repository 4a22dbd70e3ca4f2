"""The warehouse as Parquet files under a folder every worker reaches (a shared mount).

One folder per table: `<table>/cohort=<cohort>/data.parquet` for a table whose rows carry a
cohort, `<table>/data.parquet` for one without (the identity tables). A file is written under
a temporary name in its own folder and moved over the old one with `os.replace`, so a reader
(or a crash) never sees half a file, and writers of different cohorts never touch the same file.

A connection is an in-memory DuckDB in which every stored table is a view over its files
(`read_parquet(..., union_by_name = true)`: a file written before a column was added reads it
as null). The store functions in `warehouse.py` edit a cohort by loading its rows into a working
table, running the same SQL as on the DuckDB file, and writing the result back (`edit`).
"""

from __future__ import annotations

import json
import os
import uuid
import weakref
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from profiling_assets.stores.catalog import catalog_type
from profiling_assets.stores.names import UnsafeNameError, safe_cohort, safe_table

DATA_FILE = "data.parquet"
# A table created with no rows (an empty history) still needs its columns for readers.
EMPTY_FILE = "empty.parquet"
COHORT_PREFIX = "cohort="
COHORT_COLUMN = "cohort"
VIEW_SUFFIX = ".view.json"
# Characters DuckDB's glob would read as a pattern in the folder of a view.
_GLOB_CHARS = frozenset("*?[]{}")


class SharedStorageError(ValueError):
    """Rows or a folder the Parquet warehouse cannot store; the message says which."""


@dataclass(frozen=True)
class ParquetWarehouse:
    root: Path

    def __post_init__(self) -> None:
        if _GLOB_CHARS & set(str(self.root)):
            raise SharedStorageError(
                f"storage folder {self.root} has a glob character ({''.join(sorted(_GLOB_CHARS))})"
            )

    # --- layout ---------------------------------------------------------------------------

    def table_dir(self, table: str) -> Path:
        return self.root / safe_table(table)

    def unit_path(self, table: str, cohort: str | None) -> Path:
        """The file of one cohort of `table`, or the table's one file (cohort None)."""
        folder = self.table_dir(table)
        if cohort is None:
            return folder / DATA_FILE
        return folder / f"{COHORT_PREFIX}{safe_cohort(cohort)}" / DATA_FILE

    def cohort_files(self, table: str) -> dict[str, Path]:
        found = {}
        for path in self.table_dir(table).glob(f"{COHORT_PREFIX}*/{DATA_FILE}"):
            found[path.parent.name.removeprefix(COHORT_PREFIX)] = path
        return found

    def has_files(self, table: str) -> bool:
        folder = self.table_dir(table)
        return (
            (folder / DATA_FILE).is_file()
            or (folder / EMPTY_FILE).is_file()
            or bool(self.cohort_files(table))
        )

    def tables(self) -> list[str]:
        """Tables with at least one file (a folder holding only a crashed write's temporary
        file is no table yet)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _is_table(p.name) and self.has_files(p.name)
        )

    def _partitioned(self, table: str, columns: Collection[str]) -> bool:
        """Files per cohort, or one file: the layout on disk decides once there is one."""
        folder = self.table_dir(table)
        if (folder / DATA_FILE).is_file():
            return False
        return bool(self.cohort_files(table)) or COHORT_COLUMN in columns

    # --- reading ----------------------------------------------------------------------------

    def create_view(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """`table` as a view over its files. A view's definition takes no bound parameters:
        the folder is a quoted literal (checked free of glob characters above)."""
        pattern = _literal(str(self.table_dir(table) / "**" / "*.parquet"))
        con.execute(
            f'CREATE OR REPLACE VIEW "{safe_table(table)}" AS SELECT * FROM read_parquet('
            f"{pattern}, union_by_name = true, hive_partitioning = false)"
        )

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory connection with a view per stored table, known to the store functions
        as this warehouse's (`bound_warehouse`) until it closes."""
        con = duckdb.connect()
        _BOUND[con] = self
        try:
            for table in self.tables():
                self.create_view(con, table)
            yield con
        finally:
            _BOUND.pop(con, None)
            con.close()

    # --- writing ----------------------------------------------------------------------------

    @contextmanager
    def edit(
        self, con: duckdb.DuckDBPyConnection, table: str, cohorts: Collection[str] | None
    ) -> Iterator[str]:
        """A working table holding the stored rows of `cohorts` (every row when None, and
        always every row of a table without cohorts). On a clean exit each cohort it was
        loaded with or now holds gets a file of exactly its rows (with None, cohorts it no
        longer holds lose theirs); on an error nothing is written."""
        table = safe_table(table)
        wanted = None if cohorts is None else sorted({safe_cohort(c) for c in cohorts})
        work = f"__edit_{table}"
        con.execute(f'DROP TABLE IF EXISTS "{work}"')
        try:
            if self.has_files(table):
                # Anew: another worker may have added the table, a cohort or a column since
                # this connection opened.
                self.create_view(con, table)
                columns = _columns(con, table)
                if wanted is None or COHORT_COLUMN not in columns:
                    con.execute(f'CREATE TABLE "{work}" AS SELECT * FROM "{table}"')
                elif not wanted:  # no cohort to change: the columns only
                    con.execute(f'CREATE TABLE "{work}" AS SELECT * FROM "{table}" LIMIT 0')
                else:
                    con.execute(
                        f'CREATE TABLE "{work}" AS SELECT * FROM "{table}" '
                        "WHERE list_contains(?::VARCHAR[], cohort)",
                        [wanted],
                    )
            yield work
            if _exists(con, work):  # the edit may have created it (a new table)
                self._publish(con, table, work, wanted)
        finally:
            con.execute(f'DROP TABLE IF EXISTS "{work}"')

    def _publish(
        self, con: duckdb.DuckDBPyConnection, table: str, work: str, wanted: list[str] | None
    ) -> None:
        columns = _columns(con, work)
        if not self._partitioned(table, columns):
            self.write_file(self.unit_path(table, None), _arrow(con, f'SELECT * FROM "{work}"'))
            self.create_view(con, table)
            return
        held = [
            r[0]
            for r in con.execute(
                f'SELECT DISTINCT CAST(cohort AS VARCHAR) FROM "{work}"'
            ).fetchall()
        ]
        if None in held:
            raise SharedStorageError(f"{table}: rows without a cohort cannot be stored per cohort")
        existing = self.cohort_files(table)
        for cohort in sorted({*(wanted or ()), *held}):
            query = f'SELECT * FROM "{work}" WHERE cohort = ?'
            self.write_file(self.unit_path(table, cohort), _arrow(con, query, [cohort]))
        if wanted is None:  # the whole table was replaced: cohorts it no longer has go
            for cohort in sorted(set(existing) - set(held)):
                existing[cohort].unlink(missing_ok=True)
        if not self.has_files(table):  # created without rows: keep its columns for readers
            empty = _arrow(con, f'SELECT * FROM "{work}" LIMIT 0')
            self.write_file(self.table_dir(table) / EMPTY_FILE, empty)
        self.create_view(con, table)

    @staticmethod
    def write_file(path: Path, data: pa.Table) -> None:
        """Write `data` to a temporary file beside `path` (same folder, so the same file
        system), flush it to disk, then move it over `path` in one step."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with partial.open("wb") as handle:
                pq.write_table(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    # --- saved views --------------------------------------------------------------------------

    def save_view(self, name: str, params: dict[str, str]) -> None:
        """What a view needs to be created again in every later connection (a DuckDB file
        keeps its views itself; an in-memory connection forgets them when it closes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{safe_table(name)}{VIEW_SUFFIX}"
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        partial.write_text(json.dumps(params, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)

    def saved_view(self, name: str) -> dict[str, str] | None:
        path = self.root / f"{safe_table(name)}{VIEW_SUFFIX}"
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))


# Connections opened by `ParquetWarehouse.connect`, so that a store function given one writes
# files instead of tables. Weak: a connection dropped without closing leaves no entry behind.
_BOUND: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, ParquetWarehouse] = (
    weakref.WeakKeyDictionary()
)


def bound_warehouse(con: duckdb.DuckDBPyConnection) -> ParquetWarehouse | None:
    """The Parquet warehouse `con` belongs to; None for any other connection (a DuckDB file)."""
    return _BOUND.get(con)


def _is_table(name: str) -> bool:
    try:
        safe_table(name)
    except UnsafeNameError:
        return False
    return True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return catalog_type(con, name) is not None


def _columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]


def _arrow(con: duckdb.DuckDBPyConnection, query: str, params: list[str] | None = None) -> pa.Table:
    return con.sql(query, params=params).to_arrow_table()
