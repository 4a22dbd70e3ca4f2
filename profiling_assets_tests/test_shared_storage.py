"""Storage every worker reaches (`PROFILING_STORAGE_URI`): the store functions read the same on
the DuckDB file and on the Parquet warehouse, a crashed or concurrent write never leaves a
cohort unreadable, and the real profile job gives the same documents, chunks, vectors and
profiles on both, writing nothing under the data folder's warehouse or LanceDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import duckdb
import lancedb
import numpy as np
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource
from pydantic import ValidationError

from profiling_assets.commands.export import read_latest
from profiling_assets.config import Settings
from profiling_assets.core.identity import MERGE_SCHEMA
from profiling_assets.stores.identity import follow_person_merges
from profiling_assets.stores.tables import TABLES, StoredTable
from profiling_assets.stores.warehouse import (
    append_rows,
    create_latest_profiles_view,
    partition_shape,
    read_partition,
    replace_partition,
    replace_rows,
    table_exists,
)
from profiling_assets.stores.warehouse_access import open_parquet_warehouse, open_warehouse
from profiling_assets.warehouse_resource import ParquetWarehouseResource, warehouse_resource
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.sample_runs import (
    cohort_instance,
    profile_job,
    run_cohorts,
    write_sample,
)

Opener = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
T = TypeVar("T")
BACKENDS = ("duckdb", "parquet")
REPO = Path(__file__).resolve().parents[1]


def _opener(kind: str, folder: Path) -> Opener:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "duckdb":
        return lambda: duckdb.connect(str(folder / "warehouse.duckdb"))
    return lambda: open_parquet_warehouse(folder / "warehouse")


def on_both(tmp_path: Path, scenario: Callable[[Opener], T]) -> dict[str, T]:
    """The scenario's reads on each backend (every step in its own connection, as steps
    of a run are)."""
    return {kind: scenario(_opener(kind, tmp_path / kind)) for kind in BACKENDS}


FACTS = StoredTable(
    "facts", {"cohort": pl.String, "user_id": pl.String, "score": pl.Float64}, ("cohort", "user_id")
)
HIST = StoredTable(
    "hist",
    {c: pl.String for c in ("cohort", "user_id", "input_key", "llm_identity", "run_id")},
    ("user_id", "input_key", "llm_identity"),
)
NOTHING_YET = StoredTable("nothing_yet", {"cohort": pl.String, "user_id": pl.String}, ())


def facts(cohort: str, n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "cohort": [cohort] * n,
            "user_id": [f"u{i}" for i in range(start, start + n)],
            "score": [float(i) for i in range(start, start + n)],
        }
    )


def everything(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[Any, ...]]:
    return con.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()


def parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- the store functions on both backends -----------------------------------------------


def test_replace_and_replace_again_read_the_same_on_both(tmp_path: Path) -> None:
    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            replace_partition(con, FACTS, "2024-01", facts("2024-01", 3))
            replace_partition(con, FACTS, "2024-02", facts("2024-02", 2, start=10))
        with open_() as con:
            first = everything(con, "facts")
            replace_partition(con, FACTS, "2024-01", facts("2024-01", 3))  # a re-run
        with open_() as con:
            again = everything(con, "facts")
            replace_partition(con, FACTS, "2024-01", facts("2024-01", 1, start=50))
        with open_() as con:
            return [
                first,
                again,
                everything(con, "facts"),
                read_partition(con, FACTS, "2024-02").sort("user_id").rows(),
                partition_shape(con, FACTS, "2024-01"),
                partition_shape(con, FACTS, None),
            ]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    first, again, last, other, shape, whole = reads["parquet"]
    assert first == again and len(first) == 5
    assert [r[1] for r in last] == ["u50", "u10", "u11"]
    assert other == [("2024-02", "u10", 10.0), ("2024-02", "u11", 11.0)]
    assert shape == (1, [("cohort", "VARCHAR"), ("user_id", "VARCHAR"), ("score", "DOUBLE")])
    assert whole[0] == 3
    # One file per cohort, and no temporary file left by a finished write.
    assert parquet_files(tmp_path / "parquet" / "warehouse") == [
        "facts/cohort=2024-01/data.parquet",
        "facts/cohort=2024-02/data.parquet",
    ]


def test_history_stays_unique_per_key_on_both(tmp_path: Path) -> None:
    row = pl.DataFrame(
        {"cohort": ["c1"], "user_id": ["u1"], "input_key": ["a"], "llm_identity": ["m"]}
    )

    def scenario(open_: Opener) -> list[Any]:
        for run, cohort, input_key in [
            ("run-1", "c1", "a"),
            ("run-2", "c1", "a"),  # same user, input and model: replaces run-1's row
            ("run-3", "c1", "b"),  # another input: history
            ("run-4", "c2", "a"),  # the user's cohort changed: the row moves to c2's file
            ("run-5", "c2", "a"),
        ]:
            with open_() as con:
                batch = row.with_columns(
                    run_id=pl.lit(run), cohort=pl.lit(cohort), input_key=pl.lit(input_key)
                )
                append_rows(con, HIST, batch)
        with open_() as con:
            return con.execute("SELECT cohort, input_key, run_id FROM hist ORDER BY ALL").fetchall()

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    assert reads["parquet"] == [("c1", "b", "run-3"), ("c2", "a", "run-5")]


def test_an_empty_table_reads_the_same_on_both(tmp_path: Path) -> None:
    schema = {
        "cohort": pl.String,
        "user_id": pl.String,
        "run_id": pl.String,
        "attempt_errors": pl.List(pl.String),
        "created_at": pl.Datetime("us"),
    }
    failures = StoredTable("failures", schema, ("user_id", "run_id"))

    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            append_rows(con, failures, failures.empty())
        with open_() as con:
            stored = read_partition(con, failures, "2024-01")
            missing = read_partition(con, NOTHING_YET, "2024-01")
            return [
                table_exists(con, failures),
                dict(stored.schema),
                stored.height,
                dict(missing.schema),
                missing.height,
                table_exists(con, NOTHING_YET),
                partition_shape(con, failures, "2024-01"),
            ]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    exists, columns, height, missing, missing_height, missing_exists, shape = reads["parquet"]
    assert exists and height == 0 and columns == schema
    # A table not written yet reads as no rows with the registry entry's columns.
    assert missing == dict(NOTHING_YET.schema) and missing_height == 0 and not missing_exists
    assert shape[0] == 0 and [c for c, _ in shape[1]] == list(schema)


def test_every_registry_table_reads_empty_with_its_schema_on_both(tmp_path: Path) -> None:
    """Before anything is written, a read of any stored table gives no rows and the
    registry's columns and types, so no reader needs a guard for a missing table."""

    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            return [dict(read_partition(con, table, "2024-01").schema) for table in TABLES]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    assert reads["parquet"] == [dict(table.empty().schema) for table in TABLES]
    assert all(reads["parquet"])


def test_a_new_column_reads_the_same_on_both(tmp_path: Path) -> None:
    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            replace_partition(con, FACTS, "2024-01", facts("2024-01", 2))
        with open_() as con:
            grown = facts("2024-02", 2, start=5).with_columns(
                pl.lit("新标签").alias("label"), pl.lit(3, pl.Int64).alias("n_items")
            )
            replace_partition(con, FACTS, "2024-02", grown)
        with open_() as con:
            columns = [r[0] for r in con.execute('DESCRIBE "facts"').fetchall()]
            old = read_partition(con, FACTS, "2024-01")["label"].to_list()
            new = read_partition(con, FACTS, "2024-02", ["user_id", "label", "n_items"])
            replace_partition(con, FACTS, "2024-01", facts("2024-01", 1))  # an older writer
        with open_() as con:
            older = read_partition(con, FACTS, "2024-01")["n_items"].to_list()
            bad = pl.DataFrame({"cohort": ["2024-01"], "user_id": ["u9"], "score": ["x"]})
            with pytest.raises(duckdb.Error):  # a column keeps its type
                replace_partition(con, FACTS, "2024-01", bad)
        with open_() as con:
            kept = read_partition(con, FACTS, "2024-01")["user_id"].to_list()
        return [columns, old, new.sort("user_id").rows(), older, kept]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    columns, old, new, older, kept = reads["parquet"]
    assert columns == ["cohort", "user_id", "score", "label", "n_items"]
    assert old == [None, None]
    assert new == [("u5", "新标签", 3), ("u6", "新标签", 3)]
    assert older == [None] and kept == ["u0"]


def _profile_rows(run: str, identity: str, created: datetime, users: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "cohort": ["c1"] * len(users),
            "user_id": users,
            "run_id": [run] * len(users),
            "llm_identity": [identity] * len(users),
            "input_key": [f"{run}-{u}" for u in users],
            "created_at": [created] * len(users),
        }
    )


def test_latest_profiles_view_reads_the_same_on_both(tmp_path: Path) -> None:

    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            assert not create_latest_profiles_view(con, "m1")  # no user_profiles yet
            append_rows(
                con, TABLES.profiles, _profile_rows("r1", "m1", datetime(2025, 1, 1), ["u1", "u2"])
            )
            append_rows(
                con, TABLES.profiles, _profile_rows("r2", "m1", datetime(2025, 2, 1), ["u1"])
            )
            append_rows(
                con, TABLES.profiles, _profile_rows("r3", "m2", datetime(2025, 3, 1), ["u1"])
            )
            assert create_latest_profiles_view(con, "m1")
        # A later connection (another process, `export`) finds the view.
        with open_() as con:
            latest = con.execute(
                "SELECT user_id, run_id FROM latest_profiles ORDER BY user_id"
            ).fetchall()
            shape = partition_shape(con, TABLES.latest_profiles, "c1")
            # Rows written after the view was created are in it.
            append_rows(
                con, TABLES.profiles, _profile_rows("r4", "m1", datetime(2025, 4, 1), ["u2"])
            )
        with open_() as con:
            after = con.execute("SELECT user_id, run_id FROM latest_profiles ORDER BY 1").fetchall()
        return [latest, shape, after]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    latest, shape, after = reads["parquet"]
    assert latest == [("u1", "r2"), ("u2", "r1")]
    assert shape[0] == 2
    assert after == [("u1", "r2"), ("u2", "r4")]


def test_tables_without_cohorts_are_one_file_replaced_whole(tmp_path: Path) -> None:
    nodes = pl.DataFrame({"node": ["a", "b"], "id_type": ["phone"] * 2, "person_id": ["p1"] * 2})

    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            replace_rows(con, TABLES.identity_nodes, nodes, {})
        with open_() as con:
            replace_rows(con, TABLES.identity_nodes, nodes.head(1), {})
        with open_() as con:
            return everything(con, "identity_nodes")

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"] == [("a", "phone", "p1")]
    root = tmp_path / "parquet" / "warehouse"
    assert parquet_files(root) == ["identity_nodes/data.parquet"]
    # Plain Parquet: any reader (polars here) gets the rows without this package.
    assert pl.read_parquet(root / "identity_nodes" / "data.parquet").rows() == [
        ("a", "phone", "p1")
    ]


def test_person_merges_are_followed_the_same_on_both(tmp_path: Path) -> None:
    """History rows under a merged person take the survivor's id, and rows of this cohort's
    people stored under another cohort move here: in Parquet that rewrites the files of
    exactly those cohorts, and a run with nothing to follow rewrites none."""
    merges = pl.DataFrame(
        {
            "merged_person_id": ["p_old"],
            "person_id": ["p_new"],
            "merged_at": [datetime(2025, 1, 1)],
        },
        schema=MERGE_SCHEMA,
    )

    def row(cohort: str, user: str, run: str) -> pl.DataFrame:
        return _profile_rows(run, "m1", datetime(2025, 1, 1), [user]).with_columns(
            cohort=pl.lit(cohort)
        )

    def scenario(open_: Opener) -> list[Any]:
        with open_() as con:
            append_rows(con, TABLES.person_merges, merges)
            for cohort, user, run in [
                ("2024-01", "p_old", "r1"),  # merged away: renamed, and moved with p_new
                ("2024-01", "p_other", "r2"),  # untouched
                ("2024-02", "p_new", "r3"),
                ("2024-03", "p_third", "r4"),  # another cohort's person: untouched
            ]:
                append_rows(con, TABLES.profiles, row(cohort, user, run))
        with open_() as con:
            changed = follow_person_merges(con, "2024-02", ["p_new"])
        with open_() as con:
            again = follow_person_merges(con, "2024-02", ["p_new"])
            rows = con.execute(
                "SELECT cohort, user_id, run_id FROM user_profiles ORDER BY ALL"
            ).fetchall()
        return [changed, again, rows]

    reads = on_both(tmp_path, scenario)
    assert reads["parquet"] == reads["duckdb"]
    changed, again, rows = reads["parquet"]
    assert changed == 2 and again == 0  # renamed, then moved
    assert rows == [
        ("2024-01", "p_other", "r2"),
        ("2024-02", "p_new", "r1"),
        ("2024-02", "p_new", "r3"),
        ("2024-03", "p_third", "r4"),
    ]
    # Nothing to follow: not one file written (the third cohort's never was).
    root = tmp_path / "parquet" / "warehouse"
    before = {p: os.stat(p).st_mtime_ns for p in root.rglob("*.parquet")}
    with open_parquet_warehouse(root) as con:
        assert follow_person_merges(con, "2024-02", ["p_new"]) == 0
    assert {p: os.stat(p).st_mtime_ns for p in root.rglob("*.parquet")} == before


# --- crashes and concurrent writers --------------------------------------------------------

_CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import polars as pl
    from profiling_assets.stores.tables import StoredTable
    from profiling_assets.stores.warehouse import replace_partition
    from profiling_assets.stores.warehouse_access import open_parquet_warehouse

    FACTS = StoredTable(
        "facts", {"cohort": pl.String, "user_id": pl.String, "score": pl.Float64}, ()
    )

    def die(src, dst):  # the temporary file is written; the process dies before the move
        os.kill(os.getpid(), signal.SIGKILL)

    os.replace = die
    new = pl.DataFrame({"cohort": ["2024-01"], "user_id": ["new"], "score": [9.0]})
    with open_parquet_warehouse(Path(sys.argv[1])) as con:
        replace_partition(con, FACTS, "2024-01", new)
    """
)


def _python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO)


def test_a_crash_between_write_and_replace_leaves_the_old_cohort(tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    with open_parquet_warehouse(root) as con:
        replace_partition(con, FACTS, "2024-01", facts("2024-01", 2))
    writer = _python(_CRASHING_WRITER, str(root))
    assert writer.wait(timeout=120) == -signal.SIGKILL
    cohort = root / "facts" / "cohort=2024-01"
    leftovers = [p.name for p in cohort.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the dead writer's whole new file, never moved in
    with open_parquet_warehouse(root) as con:
        assert read_partition(con, FACTS, "2024-01")["user_id"].to_list() == ["u0", "u1"]
        replace_partition(con, FACTS, "2024-01", facts("2024-01", 1, start=7))
    with open_parquet_warehouse(root) as con:
        assert read_partition(con, FACTS, "2024-01")["user_id"].to_list() == ["u7"]


_COHORT_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import polars as pl
    from profiling_assets.stores.tables import StoredTable
    from profiling_assets.stores.warehouse import append_rows, replace_partition
    from profiling_assets.stores.warehouse_access import open_parquet_warehouse

    SCHEMA = {"cohort": pl.String, "user_id": pl.String, "round": pl.Int64}
    FACTS = StoredTable("facts", SCHEMA, ("cohort", "user_id"))
    HIST = StoredTable("hist", SCHEMA, ("user_id",))
    root, cohort = Path(sys.argv[1]), sys.argv[2]
    for i in range(15):
        rows = pl.DataFrame(
            {"cohort": [cohort] * 3, "user_id": [f"{cohort}-u{j}" for j in range(3)],
             "round": [i] * 3}
        )
        with open_parquet_warehouse(root) as con:
            replace_partition(con, FACTS, cohort, rows)
            append_rows(con, HIST, rows)
    """
)


def test_writers_of_different_cohorts_at_once_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    cohorts = ["2024-01", "2024-02", "2024-03"]
    writers = [_python(_COHORT_WRITER, str(root), c) for c in cohorts]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    with open_parquet_warehouse(root) as con:
        for table in ("facts", "hist"):
            stored = con.execute(
                f"SELECT cohort, count(*), count(DISTINCT user_id), min(round), max(round) "
                f"FROM {table} GROUP BY 1 ORDER BY 1"
            ).fetchall()
            assert stored == [(c, 3, 3, 14, 14) for c in cohorts], table
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --- the setting -------------------------------------------------------------------------


def test_the_storage_uri_names_a_folder_and_object_stores_are_refused(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path / "data")
    assert default.storage_root is None
    assert default.lancedb_dir == tmp_path / "data" / "lancedb"
    assert default.documents_dir == tmp_path / "data" / "documents"
    resource = warehouse_resource(default)
    assert type(resource) is DuckDBResource
    assert resource.database == str(tmp_path / "data" / "warehouse.duckdb")

    shared = tmp_path / "shared store"  # a space: the URI is percent-encoded
    for uri in (shared.as_uri(), str(shared)):
        settings = Settings(data_dir=tmp_path / "data", storage_uri=uri)
        assert settings.storage_root == shared
        assert settings.lancedb_dir == shared / "lancedb"
        assert settings.parquet_warehouse_dir == shared / "warehouse"
        assert settings.identity_map_path.is_relative_to(shared)
        for folder in (settings.documents_dir, settings.profiles_dir, settings.reports_dir):
            assert folder.parent == shared
        assert settings.cache_dir == tmp_path / "data" / "cache"  # a local cache stays local
        resource = warehouse_resource(settings)
        assert isinstance(resource, ParquetWarehouseResource)
        assert resource.root == str(shared / "warehouse")
    for uri in ("s3://bucket/profiles", "gs://bucket", "az://container/x"):
        with pytest.raises(ValidationError, match="mount the bucket"):
            Settings(storage_uri=uri)
    with pytest.raises(ValidationError, match="no host"):
        Settings(storage_uri="file://otherhost/x")


# --- the real job on both ------------------------------------------------------------------


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory):
    """The profile job with the offline models for every cohort of a tiny source, once on
    the defaults and once with the storage URI set; plus a re-run of one cohort on shared
    storage."""
    root = tmp_path_factory.mktemp("shared_storage")
    source = root / "source.duckdb"
    cohorts = write_sample(source, users=3, seed=11)
    runs: dict[str, Settings] = {}
    instances: dict[str, dg.DagsterInstance] = {}
    for mode, uri in (("default", ""), ("shared", (root / "bucket").as_uri())):
        settings = Settings(data_dir=root / mode, source=source, storage_uri=uri)
        settings.data_dir.mkdir()
        instance = cohort_instance(cohorts)
        results = run_cohorts(profile_job(settings), instance, cohorts)
        assert all(result.success for result in results.values())
        runs[mode], instances[mode] = settings, instance
    rerun = corpus.run_job(runs["shared"], cohorts[0], instances["shared"])
    return runs, cohorts, rerun


CONTENT = (
    "cohort, user_id, llm_identity, input_key, prompt_version, profile_json, facts_json, "
    "filled_fields, novel_labels, evidence_ids"
)
QUERIES = {
    "users": "SELECT * FROM users",
    "rejected": "SELECT * FROM rejected_rows",
    "documents": "SELECT cohort, user_id, markdown FROM user_documents",
    "chunks": "SELECT cohort, user_id, chunk_id, text FROM document_chunks",
    "evidence": "SELECT * FROM profile_evidence",
    "profiles": f"SELECT {CONTENT} FROM user_profiles",
    "failures": "SELECT cohort, user_id, reason, kind FROM profile_failures",
    "latest": f"SELECT {CONTENT} FROM latest_profiles",
    "segments": "SELECT * FROM user_segments",
}


def _warehouse_reads(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    with open_warehouse(settings) as con:
        return {
            name: sorted(con.execute(query).fetchall(), key=repr) for name, query in QUERIES.items()
        }


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _vectors(settings: Settings) -> pl.DataFrame:
    db = lancedb.connect(str(settings.lancedb_dir))
    (name,) = db.list_tables().tables
    return pl.from_arrow(db.open_table(name).to_arrow()).sort("chunk_id")  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_job_gives_the_same_results_on_shared_storage(both_runs) -> None:
    runs, cohorts, _ = both_runs
    default, shared = runs["default"], runs["shared"]
    reads = {mode: _warehouse_reads(settings) for mode, settings in runs.items()}
    for name in QUERIES:
        assert reads["shared"][name] == reads["default"][name], name
    assert reads["shared"]["documents"] and reads["shared"]["chunks"]
    assert reads["shared"]["profiles"] or reads["shared"]["failures"]
    for folder in ("documents_dir", "profiles_dir", "reports_dir"):
        files = _files(getattr(shared, folder))
        assert files and files == _files(getattr(default, folder)), folder
    on_default, on_shared = _vectors(default), _vectors(shared)
    assert on_shared.drop("vector").equals(on_default.drop("vector"))
    assert np.allclose(on_shared["vector"].to_list(), on_default["vector"].to_list(), atol=1e-6)
    # What `export` writes (but the time each run wrote it).
    assert read_latest(shared).drop("created_at").equals(read_latest(default).drop("created_at"))
    assert {r[0] for r in reads["shared"]["documents"]} <= set(cohorts)


@pytest.mark.slow
def test_every_table_the_job_writes_is_in_the_registry(both_runs) -> None:
    """Each stored table (and view) is a registry entry, stored with the entry's columns
    and types, on both backends."""
    runs, _, _ = both_runs
    for mode, settings in runs.items():
        with open_warehouse(settings) as con:
            names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
            names += [
                r[0]
                for r in con.execute(
                    "SELECT view_name FROM duckdb_views() WHERE NOT internal"
                ).fetchall()
            ]
            assert names, mode
            for name in names:
                stored = con.sql(f'SELECT * FROM "{name}" LIMIT 0').pl()
                assert dict(stored.schema) == dict(TABLES.named(name).empty().schema), (mode, name)


@pytest.mark.slow
def test_shared_storage_writes_nothing_under_the_data_folder(both_runs) -> None:
    runs, _, _ = both_runs
    shared = runs["shared"]
    assert shared.storage_root is not None
    assert not shared.warehouse_path.exists()
    assert not (shared.data_dir / "lancedb").exists()
    for name in ("documents", "profiles", "reports", "identity"):
        assert not (shared.data_dir / name).exists(), name
    # The tables as Parquet, a file per cohort, under the storage folder.
    files = parquet_files(shared.storage_root / "warehouse")
    assert "users/cohort=2025-01/data.parquet" in files
    assert "user_profiles/cohort=2025-01/data.parquet" in files
    assert not [f for f in files if f.endswith(".tmp")]
    assert (shared.storage_root / "lancedb").is_dir()


@pytest.mark.slow
def test_a_rerun_on_shared_storage_asks_no_model(both_runs) -> None:
    runs, cohorts, rerun = both_runs
    assert rerun.success
    assert corpus.materialized(rerun, "chunk_embeddings")["num_embedded"] == 0
    profiles = corpus.materialized(rerun, "user_profiles")
    with open_warehouse(runs["shared"]) as con:
        users = con.execute("SELECT count(*) FROM users WHERE cohort = ?", [cohorts[0]]).fetchall()[
            0
        ][0]
        asked = con.execute(
            "SELECT count(*) FROM user_profiles WHERE run_id = ?", [rerun.run_id]
        ).fetchall()[0][0]
    assert profiles["num_unchanged"] == users and asked == 0


@pytest.mark.slow
def test_the_cli_reads_the_shared_warehouse(
    both_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export`, `diff`, the demo's summary and `doctor` read where the workers wrote."""
    from profiling_assets.commands.cli import main
    from profiling_assets.commands.demo import table_counts
    from profiling_assets.commands.doctor import check_paths

    runs, _, _ = both_runs
    default, shared = runs["default"], runs["shared"]
    assert table_counts(shared) == table_counts(default) != {}
    findings = {f.topic: f for f in check_paths(shared)}
    assert findings["数仓 Parquet"].ok
    assert findings["数仓 Parquet"].detail == str(shared.storage_root / "warehouse")
    monkeypatch.setenv("PROFILING_DATA_DIR", str(shared.data_dir))
    monkeypatch.setenv("PROFILING_STORAGE_URI", shared.storage_uri)
    out = tmp_path / "latest.jsonl"
    assert main(["export", "--format", "jsonl", "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(read_latest(default)) > 0
    user = read_latest(shared)["user_id"][0]
    assert main(["diff", user]) == 1  # one profile per user so far: nothing to compare


def test_an_evaluation_never_writes_to_shared_storage(tmp_path: Path) -> None:
    from profiling_assets.commands.evaluate import eval_settings

    shared = Settings(data_dir=tmp_path / "data", storage_uri=str(tmp_path / "shared"))
    evaluation = eval_settings(shared, tmp_path / "truth.duckdb", None)
    assert evaluation.storage_root is None
    assert evaluation.lancedb_dir.is_relative_to(evaluation.data_dir)
