"""Read the source tables (a DuckDB file, a folder of Parquet/CSV/Excel, or one workbook) one
cohort at a time.

Every kind of source opens as an in-memory DuckDB connection in which each table of the
contract exists under its own name, with the company's column names mapped onto the
contract's (the spec's `columns`), so the cohort filter runs where the data is and nothing
after this module knows which kind of source it was. A DuckDB file is attached read-only and
Parquet files are viewed in place; CSV files are read line by line (`core.csv_lines`) and
Excel sheets through calamine, into tables that carry each row's line number and SHA-256.

Cohort of a user: `users.cohort` when set and valid, else the signup month `YYYY-MM` (the
signup date read as the validator reads it); rows that belong to no valid cohort (unknown user,
unparseable signup date, bad cohort name) are read by the partition `unassigned`, whose run
rejects them with a reason, so every source row lands in exactly one partition. CSV records
that are not well-formed (too many fields, text after a closing quote, bytes not in the file's
encoding) are rejected by `unassigned` too, with the reader's reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import duckdb
import polars as pl

from profiling_assets.config import Settings
from profiling_assets.core.contract import (
    ALL_SOURCE_TABLES,
    LINE_COLUMN,
    MERGED_COLUMN,
    SHA_COLUMN,
    SOURCE_COLUMN,
    SOURCE_TABLES,
    TRUTH_TABLE,
    UNSTITCHED_COLUMN,
    SourceContractError,
    contract_columns,
    table_names,
)
from profiling_assets.core.csv_lines import AUTO_ENCODING, MALFORMED_SCHEMA, check_encoding
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.core.validate import check_columns, parse_datetime_text
from profiling_assets.stores.catalog import catalog_type
from profiling_assets.stores.identity import Stitching, apply_stitching, load_stitching
from profiling_assets.stores.names import safe_cohort, safe_table
from profiling_assets.stores.source_files import (
    EXCEL_SUFFIXES,
    locate_tables,
    read_csv_file,
    read_excel_sheet,
)

UNASSIGNED_COHORT = "unassigned"
_COHORT_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SOURCES = "__sources"  # table → where it was read from, blank lines skipped
_COLUMN_MAP = "__column_map"  # table → the spec's mapping that was tried
_USER_COHORTS = "__user_cohorts"  # user id → cohort, computed once per connection

# The spec's `columns`: per table, contract column → the company's own column name.
ColumnMapping = Mapping[str, Mapping[str, str]]


class SourceInfo(NamedTuple):
    source: str  # file, sheet or table the rows came from
    detail: str  # the CSV's encoding, or the kind: excel, parquet, duckdb
    blank: int  # blank lines (or empty rows) skipped


@contextmanager
def open_source(
    path: Path,
    columns: ColumnMapping | None = None,
    encoding: str = AUTO_ENCODING,
    stitching: Stitching | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection in which the source tables exist under their contract names.

    `columns` renames the company's columns onto the contract (a column already named as the
    contract also counts); `encoding` is `auto` (UTF-8 with or without BOM, else GB18030) or a
    codec for every CSV file of the source; `stitching` keys every row on its stitched person
    (`user_id`) and leaves declared ids only as keyed hashes.
    """
    if not path.exists():
        raise SourceContractError(f"source {path} does not exist")
    try:
        encoding = check_encoding(encoding)
    except ValueError as error:
        raise SourceContractError(str(error)) from None
    con = duckdb.connect()
    try:
        con.execute(
            f"CREATE TABLE {_SOURCES} "
            "(table_name VARCHAR, source VARCHAR, detail VARCHAR, blank BIGINT)"
        )
        con.execute(
            f"CREATE TABLE {_COLUMN_MAP} (table_name VARCHAR, column_name VARCHAR, tried VARCHAR)"
        )
        if path.is_dir() or path.suffix.lower() in EXCEL_SUFFIXES:
            _register_files(con, path, columns or {}, encoding)
        else:
            _register_duckdb(con, path, columns or {})
        if stitching is not None:
            apply_stitching(con, stitching)
        yield con
    finally:
        con.close()


@contextmanager
def open_configured_source(
    settings: Settings, spec: ProfileSpec
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The source as the pipeline reads it: the spec's column mapping, the configured
    encoding, and every row keyed on its stitched person when the spec declares ids."""
    key = settings.id_key.get_secret_value()
    stitching = load_stitching(spec.identity, key, settings.identity_map_path)
    with open_source(
        settings.source_path, spec.columns, settings.source_encoding, stitching
    ) as con:
        yield con


def project_columns(
    table: str, present: list[str], mapping: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(column in the source, name it gets) for every column kept.

    A contract column is found under its mapped name, else under its own name (exactly, then
    ignoring case and outer spaces). A source column that bears a contract name the mapping
    gave to another column is dropped: the mapping says which one is meant.
    """
    loose: dict[str, str] = {}
    for name in present:
        loose.setdefault(name.strip().casefold(), name)
    renamed: dict[str, str] = {}
    for column in contract_columns(table):
        wanted = mapping.get(column)
        for candidate in ([wanted] if wanted else []) + [column]:
            found = candidate if candidate in present else loose.get(candidate.strip().casefold())
            if found is not None and found not in renamed:
                renamed[found] = column
                break
    taken = set(renamed.values())
    return [
        (name, renamed.get(name, name)) for name in present if name in renamed or name not in taken
    ]


def _quote(identifier: str) -> str:
    """A column or table name from the data as a quoted SQL identifier (quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def _note(
    con: duckdb.DuckDBPyConnection,
    table: str,
    source: SourceInfo,
    mapping: Mapping[str, str],
) -> None:
    con.execute(f"INSERT INTO {_SOURCES} VALUES (?, ?, ?, ?)", [table, *source])
    for column, tried in mapping.items():
        con.execute(f"INSERT INTO {_COLUMN_MAP} VALUES (?, ?, ?)", [table, column, tried])


def _register_duckdb(con: duckdb.DuckDBPyConnection, path: Path, columns: ColumnMapping) -> None:
    try:
        con.execute("ATTACH ? AS source_db (READ_ONLY)", [str(path)])
    except duckdb.Error as error:
        raise SourceContractError(f"source {path} cannot be opened as DuckDB: {error}") from None
    present = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = 'source_db' AND table_schema = 'main' ORDER BY 1"
        ).fetchall()
    ]
    for table in ALL_SOURCE_TABLES:
        names = {n.casefold() for n in table_names(table)}
        found = [name for name in present if name.strip().casefold() in names]
        if len(found) > 1:
            raise SourceContractError(
                f"table {table!r} is in {path.name} more than once ({', '.join(found)})"
            )
        if found:
            relation = con.sql(f"SELECT * FROM source_db.main.{_quote(found[0])}")
            mapping = columns.get(table, {})
            kept = project_columns(table, relation.columns, mapping)
            projected = relation.select(
                *(duckdb.ColumnExpression(src).alias(dst) for src, dst in kept)
            )
            projected.create_view(safe_table(table))
            _note(con, table, SourceInfo(f"{path.name}:{found[0]}", "duckdb", 0), mapping)


def _register_files(
    con: duckdb.DuckDBPyConnection, path: Path, columns: ColumnMapping, encoding: str
) -> None:
    for table, entry in locate_tables(path).items():
        mapping = columns.get(table, {})
        name = safe_table(table)
        if entry.kind == "parquet":
            # A view from a relation: DuckDB cannot bind a file path in CREATE VIEW.
            relation = con.read_parquet(str(entry.path))
            kept = project_columns(table, relation.columns, mapping)
            relation.select(
                *(duckdb.ColumnExpression(src).alias(dst) for src, dst in kept)
            ).create_view(name)
            _note(con, table, SourceInfo(entry.label, "parquet", 0), mapping)
            continue
        if entry.kind == "csv":
            read = read_csv_file(entry, encoding)
            frame, malformed = read.frame(), read.malformed_frame()
            info = SourceInfo(entry.label, read.encoding, len(read.blank_lines))
        else:
            (frame, blank), malformed = read_excel_sheet(entry), None
            info = SourceInfo(entry.label, "excel", blank)
        kept = project_columns(table, frame.columns, mapping)
        frame = frame.select(pl.col(src).alias(dst) for src, dst in kept)
        # Loaded once as a table: the reader's work (and its malformed lines) happens once.
        con.from_arrow(frame.to_arrow()).create(name)
        if malformed is not None:
            malformed = malformed.with_columns(pl.lit(entry.label, pl.String).alias("source"))
            con.from_arrow(malformed.to_arrow()).create(f"__malformed_{name}")
        _note(con, table, info, mapping)


def malformed_lines(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    """(line, csv_line, reason, source_sha256, source) of the CSV records of `table` that could
    not be read as rows; empty for other sources. They belong to no cohort: `unassigned`
    rejects them."""
    name = f"__malformed_{safe_table(table)}"
    if not _exists(con, name):
        return pl.DataFrame(schema={**MALFORMED_SCHEMA, "source": pl.String})
    return con.sql(f'SELECT * FROM "{name}" ORDER BY line').pl()


def source_of(con: duckdb.DuckDBPyConnection, table: str) -> SourceInfo:
    """Where `table` was read from (`sales.csv`, `导出.xlsx#订单`, `source.duckdb:sales`), how
    (the CSV's encoding, `excel` …) and how many blank lines or rows were skipped there."""
    found = con.execute(
        f"SELECT source, detail, blank FROM {_SOURCES} WHERE table_name = ?", [table]
    ).fetchall()
    return SourceInfo(*found[0]) if found else SourceInfo(table, "", 0)


def column_mapping(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """The spec's mapping tried for `table` (contract column → the company's name)."""
    rows = con.execute(
        f"SELECT column_name, tried FROM {_COLUMN_MAP} WHERE table_name = ?", [table]
    ).fetchall()
    return dict(rows)


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return catalog_type(con, name) is not None


def _all_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if not _exists(con, safe_table(table)):
        raise SourceContractError(f"source lacks table {table!r}")
    return [r[0] for r in con.execute(f'DESCRIBE "{safe_table(table)}"').fetchall()]


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The table's columns as the validator sees them (contract names where mapped)."""
    return [c for c in _all_columns(con, table) if not c.startswith("__")]


def check_source(con: duckdb.DuckDBPyConnection) -> None:
    """Every contract table and required column is there, or a clear error names it."""
    for table in SOURCE_TABLES:
        check_columns(table, table_columns(con, table), column_mapping(con, table))


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the opened source has `table` (an optional one such as `truth_identity`)."""
    return _exists(con, safe_table(table))


def has_truth(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        table_columns(con, TRUTH_TABLE)
    except SourceContractError:
        return False
    return True


def _ensure_user_cohorts(con: duckdb.DuckDBPyConnection) -> None:
    """`__user_cohorts` (user_id, cohort): one row per user id, invalid ones `unassigned`.

    Computed with polars and the validator's date parser, so a signup date the validator
    accepts (`2024/5/5`, `2024年5月5日`, an Excel serial) gives the same month here.
    """
    if _exists(con, _USER_COHORTS):
        return
    given = "CAST(cohort AS VARCHAR)" if "cohort" in table_columns(con, "users") else "NULL"
    users = con.sql(
        f"SELECT CAST(user_id AS VARCHAR) AS user_id, signup_date, {given} AS cohort FROM users"
    ).pl()
    signup = users["signup_date"]
    if signup.dtype.is_temporal():
        day = pl.col("signup_date").cast(pl.Date, strict=False)
    else:
        day = parse_datetime_text(pl.col("signup_date").cast(pl.String).str.strip_chars())
    own = pl.col("cohort").cast(pl.String).str.strip_chars(" ").replace("", None)
    chosen = pl.coalesce(own, day.dt.strftime("%Y-%m"))
    valid = chosen.str.contains(_COHORT_KEY) & ~chosen.str.contains("..", literal=True)
    cohorts = (
        users.select(
            "user_id", pl.when(valid).then(chosen).otherwise(pl.lit(UNASSIGNED_COHORT)).alias("c")
        )
        .group_by("user_id")
        .agg(pl.col("c").min().alias("cohort"))
    )
    con.from_arrow(cohorts.to_arrow()).create(_USER_COHORTS)


def list_cohorts(con: duckdb.DuckDBPyConnection) -> list[str]:
    check_source(con)
    _ensure_user_cohorts(con)
    rows = con.execute(
        f"SELECT DISTINCT coalesce(u.cohort, ?) AS cohort FROM users r LEFT JOIN {_USER_COHORTS} u "
        "ON CAST(r.user_id AS VARCHAR) = u.user_id ORDER BY 1",
        [UNASSIGNED_COHORT],
    ).fetchall()
    cohorts = [r[0] for r in rows]
    malformed = any(malformed_lines(con, t).height for t in SOURCE_TABLES)
    if (malformed or _has_orphans(con)) and UNASSIGNED_COHORT not in cohorts:
        cohorts = sorted([*cohorts, UNASSIGNED_COHORT])
    return cohorts


def _has_orphans(con: duckdb.DuckDBPyConnection) -> bool:
    for table in ("sales", "behaviour", "chat"):
        found = con.execute(
            f'SELECT count(*) FROM "{table}" e LEFT JOIN {_USER_COHORTS} u '
            "ON CAST(e.user_id AS VARCHAR) = u.user_id WHERE u.user_id IS NULL"
        ).fetchall()
        if found[0][0]:
            return True
    return False


class CohortTables(Mapping[str, pl.DataFrame]):
    """The cohort's source tables, each read when asked for and not kept: validating them one
    after another holds one raw table at a time, not all four (a 100k-user cohort's raw rows
    are most of intake's memory). The connection must stay open while they are read."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, cohort: str, with_provenance: bool = False
    ) -> None:
        self._con, self._cohort, self._with_provenance = con, cohort, with_provenance

    def __getitem__(self, table: str) -> pl.DataFrame:
        if table not in SOURCE_TABLES:
            raise KeyError(table)
        return read_cohort_table(self._con, table, self._cohort, self._with_provenance)

    def __iter__(self) -> Iterator[str]:
        return iter(SOURCE_TABLES)

    def __len__(self) -> int:
        return len(SOURCE_TABLES)


def read_cohort_table(
    con: duckdb.DuckDBPyConnection, table: str, cohort: str, with_provenance: bool = False
) -> pl.DataFrame:
    """The raw rows of `table` that belong to `cohort`, columns as the source has them (mapped
    onto the contract's names). `with_provenance` adds `__source`, `__line` and `__sha256`
    (null where the source has no lines) for `rejected_rows`, and what identity stitching
    noted (`__merged` users rows, `__unstitched` reasons) for the validator."""
    safe_cohort(cohort)
    if table not in (*SOURCE_TABLES, TRUTH_TABLE):
        raise SourceContractError(f"unknown source table {table!r}")
    every = _all_columns(con, table)
    columns = [c for c in every if not c.startswith("__")]
    if table in SOURCE_TABLES:
        check_columns(table, columns, column_mapping(con, table))
    _ensure_user_cohorts(con)
    noted = (LINE_COLUMN, SHA_COLUMN, MERGED_COLUMN, UNSTITCHED_COLUMN)
    extra = [c for c in noted if c in every and with_provenance]
    select = ", ".join(f"r.{_quote(c)}" for c in (*columns, *extra))
    order = f" ORDER BY r.{LINE_COLUMN}" if LINE_COLUMN in every else ""
    frame = con.sql(
        f'SELECT {select} FROM "{table}" r LEFT JOIN {_USER_COHORTS} u '
        f"ON CAST(r.user_id AS VARCHAR) = u.user_id WHERE coalesce(u.cohort, ?) = ?{order}",
        params=[UNASSIGNED_COHORT, cohort],
    ).pl()
    if not with_provenance:
        return frame
    source = source_of(con, table).source
    missing = {LINE_COLUMN: pl.Int64, SHA_COLUMN: pl.String}
    return frame.with_columns(
        pl.lit(source, pl.String).alias(SOURCE_COLUMN),
        *(pl.lit(None, dtype).alias(c) for c, dtype in missing.items() if c not in frame.columns),
    )
