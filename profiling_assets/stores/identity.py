"""Identity stitching against the stores: read the source's ids, keep the person map in the
warehouse, and rewrite an opened source so that `user_id` is the stitched person everywhere.

The warehouse holds only keyed hashes of ids (`identity_nodes`), the people (`persons`, with
the number of ids of each type), the merge log (`person_merges`), and what the guards set
aside (`identity_excluded`, `identity_oversize`); never an id as the source wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from profiling_assets.core.contract import (
    IDENTITIES_TABLE,
    IDENTITY_PAIR_COLUMNS,
    LINE_COLUMN,
    MERGED_COLUMN,
    PROVENANCE_COLUMNS,
    SHA_COLUMN,
    SOURCE_COLUMN,
    SOURCE_TABLES,
    UNSTITCHED_COLUMN,
    SourceContractError,
)
from profiling_assets.core.documents import ID_SOURCES_COLUMN
from profiling_assets.core.identity import (
    EXCLUDED_SCHEMA,
    MERGE_SCHEMA,
    NODE_SCHEMA,
    OVERSIZE_SCHEMA,
    PersonIds,
    Stitched,
    assign_person_ids,
    id_sources_text,
    identity_key,
    normalised_id,
    pair_edges,
    resolve_merges,
    row_edges,
    row_nodes,
    row_person,
    stitch,
)
from profiling_assets.core.spec import IDENTITY_TABLES, Identity
from profiling_assets.core.validate import parse_datetime_text
from profiling_assets.stores.catalog import catalog_type
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import (
    append_rows,
    edit_table,
    read_table,
    replace_rows,
    table_exists,
)

# The column every table keys its person on once stitched (the contract's user id).
PERSON_COLUMN = "user_id"
IMPLICIT_ID_TYPE = "user_id"  # a table without declared ids joins on its user_id column
IDENTITY_TABLES_IN_WAREHOUSE = (
    "identity_nodes",
    "persons",
    "person_merges",
    "identity_excluded",
    "identity_oversize",
)


NO_ID_REASON = "行内没有可用的身份 id（为空、占位值或在 identity.deny 中）"
UNLINKED_REASON = "行内的身份 id 都没有拼接到人（被排除的共享 id，或尚未运行 person_ids）"


@dataclass(frozen=True)
class Stitching:
    """What an opened source needs to key its rows on people: the spec's rules, the HMAC key
    and the stored node → person map."""

    rules: Identity
    key: bytes
    node_persons: pl.DataFrame  # NODE_SCHEMA

    @property
    def deny(self) -> frozenset[str]:
        return frozenset(self.rules.deny)


def id_columns(rules: Identity, table: str, present: list[str]) -> dict[str, str]:
    """Declared id columns of `table` found in the source (column → id type); a table that
    declares none joins on its `user_id` column when it has one."""
    loose = {name.strip().casefold(): name for name in present}
    found: dict[str, str] = {}
    for column, id_type in rules.ids.get(table, {}).items():
        name = column if column in present else loose.get(column.strip().casefold())
        if name is None:
            raise SourceContractError(
                f"identity.ids.{table}.{column}：source table {table!r} has no column "
                f"{column!r} (has: {', '.join(c for c in present if not c.startswith('__'))})"
            )
        found[name] = id_type
    if not found and PERSON_COLUMN in present:
        found[PERSON_COLUMN] = IMPLICIT_ID_TYPE
    return found


def _source_tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    names = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_name NOT LIKE '\\_\\_%' ESCAPE '\\'"
        ).fetchall()
    ]
    return {
        name: [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
        for name in names
        if name in (*IDENTITY_TABLES, IDENTITIES_TABLE)
    }


def stitch_source(
    con: duckdb.DuckDBPyConnection,
    rules: Identity,
    key: bytes,
    previous_nodes: pl.DataFrame,
    previous_persons: pl.DataFrame,
    now: datetime,
) -> tuple[PersonIds, Stitched, int]:
    """Stitch the whole source (every table, not one cohort); also the number of rows read."""
    deny = frozenset(rules.deny)
    nodes, edges, rows = [], [], 0
    tables = _source_tables(con)
    for table, present in tables.items():
        if table == IDENTITIES_TABLE:
            continue
        columns = id_columns(rules, table, present)
        if not columns:
            continue
        select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in columns)
        frame = con.sql(f'SELECT {select} FROM "{table}"').pl()
        found = row_nodes(frame, columns, key, deny)
        nodes += [found[c] for c in found.columns]
        edges.append(row_edges(found))
        rows += frame.height
    if IDENTITIES_TABLE in tables:
        missing = [c for c in IDENTITY_PAIR_COLUMNS if c not in tables[IDENTITIES_TABLE]]
        if missing:
            raise SourceContractError(f"source table 'identities' lacks {', '.join(missing)}")
        select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in IDENTITY_PAIR_COLUMNS)
        pairs = con.sql(f"SELECT {select} FROM {IDENTITIES_TABLE}").pl()
        pair = pair_edges(pairs, key, deny)
        edges.append(pair)
        nodes += [pair["a"], pair["b"]]
        rows += pairs.height
    every = (
        pl.concat([n.alias("node") for n in nodes]) if nodes else pl.Series("node", [], pl.String)
    )
    stitched = stitch(
        every,
        pl.concat(edges) if edges else pl.DataFrame(schema={"a": pl.String, "b": pl.String}),
        rules,
    )
    return (
        assign_person_ids(stitched.components, previous_nodes, previous_persons, now),
        stitched,
        rows,
    )


def read_person_map(con: duckdb.DuckDBPyConnection) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(identity_nodes, persons) as last stitched; empty frames before the first stitching."""
    return (
        read_table(con, TABLES.identity_nodes),
        read_table(con, TABLES.persons),
    )


def read_merges(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return read_table(con, TABLES.person_merges)


def write_person_map(con: duckdb.DuckDBPyConnection, result: PersonIds, stitched: Stitched) -> None:
    """Replace the map and the guard reports; append this run's merges to the log."""
    replace_rows(con, TABLES.identity_nodes, result.nodes, {})
    replace_rows(con, TABLES.persons, result.persons, {})
    replace_rows(con, TABLES.identity_excluded, stitched.excluded.cast(EXCLUDED_SCHEMA), {})  # type: ignore[arg-type]
    replace_rows(con, TABLES.identity_oversize, stitched.oversize.cast(OVERSIZE_SCHEMA), {})  # type: ignore[arg-type]
    # One log row per merged id: re-running the same stitching adds nothing.
    append_rows(con, TABLES.person_merges, result.merges.cast(MERGE_SCHEMA))  # type: ignore[arg-type]


def apply_stitching(con: duckdb.DuckDBPyConnection, stitching: Stitching) -> None:
    """Rewrite the opened source's tables in place: `user_id` := the row's person (null when
    none of its ids has one), each declared id column := its keyed hash, and the users rows of
    one person folded into one (earliest signup first, first value given per column)."""
    tables = _source_tables(con)
    for table, present in tables.items():
        if table == IDENTITIES_TABLE:
            con.execute(f'DROP {_kind(con, table)} "{table}"')  # ids only; read by stitching
            continue
        columns = id_columns(stitching.rules, table, present)
        if not columns:
            continue
        frame = con.sql(f'SELECT * FROM "{table}"').pl()
        nodes = row_nodes(
            frame.select(pl.col(c).cast(pl.String) for c in columns),
            columns,
            stitching.key,
            stitching.deny,
        )
        person = row_person(nodes, stitching.node_persons)
        frame = frame.with_columns(
            _kept_as_node(frame[c], nodes[c]).alias(c) for c in columns if c != PERSON_COLUMN
        )
        no_id = pl.all_horizontal(nodes[c].is_null() for c in nodes.columns)
        reason = pl.when(person.is_null()).then(
            pl.when(no_id).then(pl.lit(NO_ID_REASON)).otherwise(pl.lit(UNLINKED_REASON))
        )
        frame = frame.with_columns(
            person.alias(PERSON_COLUMN), pl.select(reason).to_series().alias(UNSTITCHED_COLUMN)
        )
        if table == "users":
            frame = fold_users(frame)
        con.execute(f'DROP {_kind(con, table)} "{table}"')
        con.from_arrow(frame.to_arrow()).create(table)


INVALID_ID = "[无效 id]"


def _kept_as_node(raw: pl.Series, node: pl.Series) -> pl.Series:
    """An id column as stored: its keyed hash, or `[无效 id]` where a value was given but is
    no id (a placeholder, a denied value), so a rejected row still says why."""
    given = raw.cast(pl.String).str.strip_chars().fill_null("") != ""
    return node.zip_with(node.is_not_null() | ~given, pl.Series([INVALID_ID] * len(node)))


def _kind(con: duckdb.DuckDBPyConnection, table: str) -> str:
    return "VIEW" if catalog_type(con, table) == "VIEW" else "TABLE"


def fold_users(users: pl.DataFrame) -> pl.DataFrame:
    """One users row per person: the row with the earliest signup first, then per column the
    first value given; `__merged` counts the rows folded in. Rows of no person stay apart."""
    signup = users["signup_date"] if "signup_date" in users.columns else None
    if signup is not None and signup.dtype.is_temporal():
        day = pl.col("signup_date").cast(pl.Datetime("us"), strict=False)
    else:
        day = parse_datetime_text(pl.col("signup_date").cast(pl.String).str.strip_chars())
    ordered = users.with_row_index("__order").with_columns(day.alias("__day"))
    ordered = ordered.sort(["__day", "__order"], nulls_last=True)
    alone = ordered.filter(pl.col(PERSON_COLUMN).is_null())
    grouped = ordered.filter(pl.col(PERSON_COLUMN).is_not_null())
    own = [c for c in users.columns if c != PERSON_COLUMN and c not in PROVENANCE_COLUMNS]
    provenance = [c for c in (SOURCE_COLUMN, LINE_COLUMN, SHA_COLUMN) if c in users.columns]
    folded = grouped.group_by(PERSON_COLUMN, maintain_order=True).agg(
        *(pl.col(c).drop_nulls().first() for c in own),
        *(pl.col(c).first() for c in provenance),
        (pl.len() - 1).cast(pl.Int64).alias(MERGED_COLUMN),
        pl.col("__order").min(),
    )
    alone = alone.select(*folded.columns[:-2], pl.lit(0, pl.Int64).alias(MERGED_COLUMN), "__order")
    both = pl.concat([folded, alone.select(folded.columns)], how="vertical_relaxed")
    return both.sort("__order").drop("__order").select(*users.columns, MERGED_COLUMN)


def write_map_file(path: Path, nodes: pl.DataFrame) -> None:
    """The node → person map as Parquet, replaced atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    nodes.write_parquet(partial)
    partial.replace(path)


def load_stitching(rules: Identity, key_text: str, map_path: Path) -> Stitching | None:
    """The stitching an opened source applies; None when the spec declares no ids. Before the
    first `person_ids` run the map is empty: every row is then of no person (`unassigned`)."""
    if not rules.declared:
        return None
    key = identity_key(key_text)
    nodes = pl.read_parquet(map_path) if map_path.exists() else pl.DataFrame(schema=NODE_SCHEMA)
    return Stitching(rules, key, nodes)


def stitched_rows_against_truth(
    con: duckdb.DuckDBPyConnection, stitching: Stitching, truth: pl.DataFrame
) -> pl.DataFrame:
    """(predicted, true) person of each source row named in `truth_identity` (table_name,
    row_key, person), read from the un-stitched source `con`. A row is found by its table's
    key column, or for a table without one (users) by its first declared id, normalised."""
    found = []
    for table, present in _source_tables(con).items():
        wanted = truth.filter(pl.col("table_name") == table)
        if wanted.height == 0 or table == IDENTITIES_TABLE:
            continue
        columns = id_columns(stitching.rules, table, present)
        contract_key = SOURCE_TABLES[table].key if table in SOURCE_TABLES else None
        key = contract_key if contract_key in present and contract_key != PERSON_COLUMN else None
        select = ", ".join(
            f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in {**columns, key or "": ""} if c
        )
        frame = con.sql(f'SELECT {select} FROM "{table}"').pl()
        nodes = row_nodes(frame, columns, stitching.key, stitching.deny)
        if key is None:
            key, id_type = next(iter(columns.items()))
            row_keys = frame.select(normalised_id(pl.col(key), id_type)).to_series()
            wanted = wanted.with_columns(normalised_id(pl.col("row_key"), id_type))
        else:
            row_keys = frame[key]
        rows = pl.DataFrame(
            {"row_key": row_keys, "predicted": row_person(nodes, stitching.node_persons)}
        ).unique("row_key")
        found.append(
            wanted.join(rows, on="row_key", how="left").select(
                "predicted", pl.col("person").alias("true")
            )
        )
    return (
        pl.concat(found)
        if found
        else pl.DataFrame(schema={"predicted": pl.String, "true": pl.String})
    )


PROFILE_HISTORY_TABLES = (TABLES.profiles, TABLES.failures)


def follow_person_merges(con: duckdb.DuckDBPyConnection, cohort: str, persons: list[str]) -> int:
    """Profile history follows people: rows stored under a merged person id take the id that
    survived, and rows of this cohort's people stored under another cohort (a merge can move
    a person to the cohort of an earlier signup) move here. Returns the rows changed."""
    merges = resolve_merges(read_merges(con))
    changed = 0
    moves = pl.DataFrame(
        {"merged": list(merges), "survivor": list(merges.values())},
        schema={"merged": pl.String, "survivor": pl.String},
    )
    people = pl.DataFrame({"person": persons}, schema={"person": pl.String})
    with _registered(con, __moves=moves, __people=people):
        for table in PROFILE_HISTORY_TABLES:
            if not table_exists(con, table):
                continue
            touched = _cohorts_to_follow(con, table.name, cohort)
            with edit_table(con, table, touched) as target:
                renamed = con.execute(
                    f'UPDATE "{target}" t SET user_id = m.survivor FROM __moves m '
                    "WHERE t.user_id = m.merged"
                ).fetchall()
                moved = con.execute(
                    f'UPDATE "{target}" SET cohort = ? WHERE cohort <> ? '
                    "AND user_id IN (SELECT person FROM __people)",
                    [cohort, cohort],
                ).fetchall()
            changed += renamed[0][0] + moved[0][0]
    return changed


def _cohorts_to_follow(
    con: duckdb.DuckDBPyConnection, table: str, cohort: str
) -> Callable[[], set[str]]:
    """For a Parquet warehouse: the cohorts whose files the updates above can change (those
    holding a merged id or one of this cohort's people, and this cohort, where they move);
    none when no row needs either, so an ordinary run rewrites no file."""

    def cohorts() -> set[str]:
        found = con.execute(
            f'SELECT DISTINCT CAST(cohort AS VARCHAR) FROM "{table}" '
            "WHERE user_id IN (SELECT merged FROM __moves) "
            "OR (cohort <> ? AND user_id IN (SELECT person FROM __people))",
            [cohort],
        ).fetchall()
        return {cohort, *(r[0] for r in found)} if found else set()

    return cohorts


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, **frames: pl.DataFrame) -> Iterator[None]:
    for name, frame in frames.items():
        con.register(name, frame.to_arrow())
    try:
        yield
    finally:
        for name in frames:
            con.unregister(name)


def with_id_sources(users: pl.DataFrame, persons: pl.DataFrame) -> pl.DataFrame:
    """`users` with the `id_sources` text their documents print (`手机号 2 个、会员号 1 个`)."""
    texts = {p: id_sources_text(c) for p, c in persons.select("person_id", "id_counts").iter_rows()}
    sources = users[PERSON_COLUMN].replace_strict(texts, default=None, return_dtype=pl.String)
    return users.with_columns(sources.alias(ID_SOURCES_COLUMN))
