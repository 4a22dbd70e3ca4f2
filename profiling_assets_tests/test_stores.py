"""Source reader (DuckDB file, CSV folder, Parquet folder), name checks and the warehouse."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from profiling_assets.core.contract import SOURCE_TABLES, SourceContractError
from profiling_assets.stores.names import (
    UnsafeNameError,
    is_valid_cohort,
    safe_cohort,
    safe_file_stem,
    safe_table,
)
from profiling_assets.stores.source import (
    UNASSIGNED_COHORT,
    check_source,
    has_truth,
    list_cohorts,
    open_source,
    read_cohort_table,
    table_columns,
)
from profiling_assets.stores.tables import StoredTable
from profiling_assets.stores.warehouse import (
    append_rows,
    read_partition,
    replace_partition,
    replace_rows,
    table_exists,
)

BAD_COHORTS = ["a'b", "../x", "2024-01; DROP TABLE users", "x..y", "a/b", "有中文"]


def text_frame(rows: list[dict[str, str | None]]) -> pl.DataFrame:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return pl.DataFrame(
        {c: [r.get(c) for r in rows] for c in columns}, schema=dict.fromkeys(columns, pl.String)
    )


def user(user_id: str | None, signup: str, cohort: str | None = None) -> dict[str, str | None]:
    return {
        "user_id": user_id,
        "gender": "女",
        "age": "30",
        "city": "上海",
        "signup_date": signup,
        "cohort": cohort,
    }


USERS = [
    user("u1", "2024-01-05"),
    user("u2", "2024-02-10", ""),
    user("u3", "2024-01-20", "vip-A"),
    user("u4", "abc"),
    user("u5", "2024-01-05", "a'b"),
    user("u6", "2024-01-05", "../x"),
    user("u7", "2024-01-05", "2024-01; DROP TABLE users"),
    user("u8", "2024-01-05", "x..y"),
    user(None, "2024-01-05"),
    user("u9", "2024-01-28", " 2024-01 "),  # padded override: trimmed
]
SALES = [
    {"order_id": o, "user_id": u, "item": "祛眼袋", "amount": "5200", "order_date": "2024-01-03"}
    for o, u in [("o1", "u1"), ("o2", "u2"), ("o3", "u3"), ("o4", "ghost"), ("o5", "u4")]
] + [{"order_id": "o6", "user_id": "u1", "item": "皮肤管理", "amount": "398", "extra": "x"}]
BEHAVIOUR = [
    {"event_id": "e1", "user_id": "u1", "event_type": "浏览文章", "target": "《开眼角》"},
    {"event_id": "e2", "user_id": "u5", "event_type": "浏览视频", "target": "《双眼皮》"},
]
CHAT = [
    {"message_id": "m1", "user_id": "u2", "message": "上次做眼袋恢复得有点慢"},
    {"message_id": "m2", "user_id": "u7", "message": "双眼皮有没有自然一点的方案？"},
]


def tables(**override: list[dict[str, str | None]]) -> dict[str, pl.DataFrame]:
    rows = {"users": USERS, "sales": SALES, "behaviour": BEHAVIOUR, "chat": CHAT} | override
    frames = {name: text_frame(r) for name, r in rows.items()}
    frames["behaviour"] = frames["behaviour"].with_columns(
        pl.lit("2024-01-06 10:00:00").alias("event_time")
    )
    frames["chat"] = frames["chat"].with_columns(pl.lit("2024-01-07 09:00:00").alias("sent_at"))
    return frames


def write_duckdb(folder: Path, frames: dict[str, pl.DataFrame]) -> Path:
    path = folder / "source.duckdb"
    con = duckdb.connect(str(path))
    for name, frame in frames.items():
        con.register("incoming", frame.to_arrow())
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
        con.unregister("incoming")
    con.close()
    return path


def write_folder(folder: Path, frames: dict[str, pl.DataFrame], kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if kind == "csv":
            frame.write_csv(folder / f"{name}.csv")
        else:
            frame.write_parquet(folder / f"{name}.parquet")
    return folder


def make_source(tmp_path: Path, kind: str, frames: dict[str, pl.DataFrame]) -> Path:
    if kind == "duckdb":
        return write_duckdb(tmp_path, frames)
    return write_folder(tmp_path / kind, frames, kind)


KINDS = ["duckdb", "csv", "parquet"]


@pytest.fixture(scope="module", params=KINDS)
def source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The shared source, read only: one per kind for the module."""
    folder = tmp_path_factory.mktemp(request.param)
    with open_source(make_source(folder, request.param, tables())) as con:
        yield con


def ids(frame: pl.DataFrame, key: str) -> list[str | None]:
    return sorted(frame[key].cast(pl.String).to_list(), key=lambda v: (v is None, v))


def test_list_cohorts(source: duckdb.DuckDBPyConnection) -> None:
    assert list_cohorts(source) == ["2024-01", "2024-02", UNASSIGNED_COHORT, "vip-A"]


@pytest.mark.parametrize(
    ("table", "cohort", "expected"),
    [
        ("users", "2024-01", ["u1", "u9"]),
        ("users", "2024-02", ["u2"]),
        ("users", "vip-A", ["u3"]),
        ("users", UNASSIGNED_COHORT, ["u4", "u5", "u6", "u7", "u8", None]),
        ("sales", "2024-01", ["o1", "o6"]),
        ("sales", "2024-02", ["o2"]),
        ("sales", "vip-A", ["o3"]),
        ("sales", UNASSIGNED_COHORT, ["o4", "o5"]),
        ("behaviour", "2024-01", ["e1"]),
        ("behaviour", UNASSIGNED_COHORT, ["e2"]),
        ("chat", "2024-02", ["m1"]),
        ("chat", UNASSIGNED_COHORT, ["m2"]),
        ("chat", "2024-01", []),
        ("sales", "2099-12", []),
    ],
)
def test_read_cohort_table_returns_exactly_the_cohort_rows(
    source: duckdb.DuckDBPyConnection, table: str, cohort: str, expected: list[str | None]
) -> None:
    frame = read_cohort_table(source, table, cohort)
    assert ids(frame, SOURCE_TABLES[table].key) == expected


def test_every_source_row_lands_in_exactly_one_cohort(source: duckdb.DuckDBPyConnection) -> None:
    cohorts = list_cohorts(source)
    for table, frame in tables().items():
        key = SOURCE_TABLES[table].key
        read = [v for c in cohorts for v in read_cohort_table(source, table, c)[key].to_list()]
        assert Counter(read) == Counter(frame[key].to_list()), table


def test_read_keeps_source_columns(source: duckdb.DuckDBPyConnection) -> None:
    frame = read_cohort_table(source, "sales", "2024-01")
    assert set(frame.columns) == set(tables()["sales"].columns)
    assert "extra" in frame.columns  # extra columns reach the validator, which ignores them


def test_injection_in_cohort_override_does_nothing(source: duckdb.DuckDBPyConnection) -> None:
    list_cohorts(source)
    frame = read_cohort_table(source, "users", UNASSIGNED_COHORT)
    assert "2024-01; DROP TABLE users" in frame["cohort"].to_list()
    assert table_columns(source, "users")  # still there


@pytest.mark.parametrize("kind", KINDS)
def test_orphans_alone_create_unassigned(tmp_path: Path, kind: str) -> None:
    frames = tables(users=[user("u1", "2024-01-05")])
    with open_source(make_source(tmp_path, kind, frames)) as con:
        assert list_cohorts(con) == ["2024-01", UNASSIGNED_COHORT]
        assert ids(read_cohort_table(con, "users", UNASSIGNED_COHORT), "user_id") == []
        orphans = ids(read_cohort_table(con, "sales", UNASSIGNED_COHORT), "order_id")
        assert orphans == ["o2", "o3", "o4", "o5"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_unassigned_when_everything_belongs(tmp_path: Path, kind: str) -> None:
    frames = tables(
        users=[user("u1", "2024-01-05"), user("u2", "2024-03-01")],
        sales=[SALES[0]],
        behaviour=[BEHAVIOUR[0]],
        chat=[CHAT[0]],
    )
    with open_source(make_source(tmp_path, kind, frames)) as con:
        assert list_cohorts(con) == ["2024-01", "2024-03"]


@pytest.mark.parametrize("kind", KINDS)
def test_users_without_cohort_column_use_signup_month(tmp_path: Path, kind: str) -> None:
    frames = tables()
    frames["users"] = frames["users"].drop("cohort")
    with open_source(make_source(tmp_path, kind, frames)) as con:
        assert list_cohorts(con) == ["2024-01", "2024-02", UNASSIGNED_COHORT]
        users = ids(read_cohort_table(con, "users", "2024-01"), "user_id")
        assert users == ["u1", "u3", "u5", "u6", "u7", "u8", "u9"]


def test_typed_duckdb_source(tmp_path: Path) -> None:
    frames = {
        "users": pl.DataFrame(
            {
                "user_id": [1, 2],
                "signup_date": [date(2024, 1, 5), date(2024, 2, 1)],
                "cohort": [None, "vip"],
            },
            schema_overrides={"cohort": pl.String},
        ),
        "sales": pl.DataFrame(
            {
                "order_id": [10, 11],
                "user_id": [1, 3],
                "item": ["a", "b"],
                "amount": [1.0, 2.0],
                "order_date": [date(2024, 1, 6)] * 2,
            }
        ),
        "behaviour": tables()["behaviour"].clear(),
        "chat": tables()["chat"].clear(),
    }
    with open_source(write_duckdb(tmp_path, frames)) as con:
        assert list_cohorts(con) == ["2024-01", UNASSIGNED_COHORT, "vip"]
        assert read_cohort_table(con, "sales", "2024-01")["order_id"].to_list() == [10]
        assert read_cohort_table(con, "sales", UNASSIGNED_COHORT)["order_id"].to_list() == [11]


def test_duplicate_user_ids_go_to_one_cohort(tmp_path: Path) -> None:
    frames = tables(users=[user("u1", "2024-01-05"), user("u1", "2024-03-05", "vip-A")])
    with open_source(make_source(tmp_path, "csv", frames)) as con:
        cohorts = list_cohorts(con)
        assert "2024-03" not in cohorts
        found = [c for c in cohorts if read_cohort_table(con, "users", c).height]
        assert found == ["2024-01"]
        assert read_cohort_table(con, "users", "2024-01").height == 2


# --- contract errors ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("missing", list(SOURCE_TABLES))
def test_missing_table_is_a_clear_error(tmp_path: Path, kind: str, missing: str) -> None:
    frames = {name: frame for name, frame in tables().items() if name != missing}
    with open_source(make_source(tmp_path, kind, frames)) as con:
        with pytest.raises(SourceContractError, match=missing):
            list_cohorts(con)
        with pytest.raises(SourceContractError, match=missing):
            check_source(con)
        with pytest.raises(SourceContractError, match=missing):
            read_cohort_table(con, missing, "2024-01")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("table", "column"),
    [("users", "signup_date"), ("users", "user_id"), ("sales", "amount"), ("chat", "message")],
)
def test_missing_required_column_is_a_clear_error(
    tmp_path: Path, kind: str, table: str, column: str
) -> None:
    frames = tables()
    frames[table] = frames[table].drop(column)
    with open_source(make_source(tmp_path, kind, frames)) as con:
        with pytest.raises(SourceContractError) as error:
            list_cohorts(con)
        assert repr(table) in str(error.value)
        assert column in str(error.value)
        if table != "users":
            with pytest.raises(SourceContractError, match=column):
                read_cohort_table(con, table, "2024-01")


def test_missing_source_path(tmp_path: Path) -> None:
    with pytest.raises(SourceContractError, match="does not exist"), open_source(tmp_path / "no"):
        pass


def test_unknown_table_and_unsafe_cohort_are_refused(source: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(SourceContractError, match="unknown source table"):
        read_cohort_table(source, "users; DROP TABLE users", "2024-01")
    for bad in BAD_COHORTS:
        with pytest.raises(UnsafeNameError):
            read_cohort_table(source, "users", bad)


def test_truth_table_is_optional(source: duckdb.DuckDBPyConnection) -> None:
    assert has_truth(source) is False


def test_truth_table_is_found(tmp_path: Path) -> None:
    frames = tables() | {"truth": text_frame([{"user_id": "u1", "segment": "a"}])}
    with open_source(make_source(tmp_path, "parquet", frames)) as con:
        assert has_truth(con) is True
        assert read_cohort_table(con, "truth", "2024-01")["user_id"].to_list() == ["u1"]


def test_csv_with_ragged_and_bad_cells_still_reads(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "csv", tables(), "csv")
    with (folder / "sales.csv").open("a", encoding="utf-8") as f:
        f.write("o7,u1,面膜,not-a-number,2024-13-45\n")
    with open_source(folder) as con:
        frame = read_cohort_table(con, "sales", "2024-01")
        assert ids(frame, "order_id") == ["o1", "o6", "o7"]
        assert set(frame.schema.values()) == {pl.String}


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2024-01", "vip-A", "unassigned", "a.b", "A_1", "x" * 64])
def test_safe_cohort_accepts(name: str) -> None:
    assert safe_cohort(name) == name
    assert is_valid_cohort(name)


@pytest.mark.parametrize(
    "name",
    [
        *BAD_COHORTS,
        "",
        "-x",
        ".hidden",
        "a b",
        'a"b',
        "a\\b",
        "x" * 65,
        "2024-01\n",
        "2024-01' OR '1'='1",
    ],
)
def test_safe_cohort_rejects(name: str) -> None:
    assert not is_valid_cohort(name)
    with pytest.raises(UnsafeNameError):
        safe_cohort(name)


@pytest.mark.parametrize("name", ["users", "user_profiles", "_t", "t1", "a" * 63])
def test_safe_table_accepts(name: str) -> None:
    assert safe_table(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Users",
        "1users",
        "user-profiles",
        "a b",
        "t'x",
        't"x',
        "../t",
        "a/b",
        "users; DROP TABLE users",
        "users--",
        "a" * 64,
        "users\n",
    ],
)
def test_safe_table_rejects(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        safe_table(name)


@pytest.mark.parametrize("user_id", ["u1", "user.name@example", "A-1_2"])
def test_safe_file_stem_keeps_plain_ids(user_id: str) -> None:
    assert safe_file_stem(user_id) == user_id


@pytest.mark.parametrize(
    "user_id", ["../etc/passwd", "a/b", "a..b", "用户", "", "a b", ".x", "u1\n"]
)
def test_safe_file_stem_hashes_the_rest(user_id: str) -> None:
    stem = safe_file_stem(user_id)
    assert stem.startswith("u_")
    assert len(stem) == 22
    assert "/" not in stem
    assert stem == safe_file_stem(user_id)
    assert stem != safe_file_stem(user_id + "x")


# --- warehouse ------------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield con
    con.close()


FACTS_SCHEMA = {"cohort": pl.String, "user_id": pl.String, "score": pl.Float64}
FACTS = StoredTable("facts", FACTS_SCHEMA, ("cohort", "user_id"))
VECTORS = StoredTable("vectors", {**FACTS_SCHEMA, "model": pl.String}, ("cohort", "model"))


def rows(cohort: str, n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "cohort": [cohort] * n,
            "user_id": [f"u{i}" for i in range(start, start + n)],
            "score": [float(i) for i in range(start, start + n)],
        }
    )


def all_rows(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    return con.sql(f'SELECT * FROM "{table}" ORDER BY cohort, user_id').pl()


def test_replace_partition_is_idempotent(warehouse: duckdb.DuckDBPyConnection) -> None:
    assert not table_exists(warehouse, FACTS)
    assert replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 3)) == 3
    first = all_rows(warehouse, "facts")
    assert replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 3)) == 3
    assert all_rows(warehouse, "facts").equals(first)
    assert first.height == 3
    assert table_exists(warehouse, FACTS)


def test_replace_partition_only_touches_its_cohort(warehouse: duckdb.DuckDBPyConnection) -> None:
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 3))
    replace_partition(warehouse, FACTS, "2024-02", rows("2024-02", 2, start=10))
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 1, start=50))
    assert (
        read_partition(warehouse, FACTS, "2024-02")
        .sort("user_id")
        .equals(rows("2024-02", 2, start=10))
    )
    assert read_partition(warehouse, FACTS, "2024-01")["user_id"].to_list() == ["u50"]
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 0))
    assert read_partition(warehouse, FACTS, "2024-01").height == 0
    assert read_partition(warehouse, FACTS, "2024-02").height == 2


def test_schema_growth_adds_columns(warehouse: duckdb.DuckDBPyConnection) -> None:
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 2))
    grown = rows("2024-02", 2, start=5).with_columns(
        pl.lit("新标签").alias("label"), pl.lit(3, pl.Int64).alias("n_items")
    )
    replace_partition(warehouse, FACTS, "2024-02", grown)
    columns = [r[0] for r in warehouse.execute('DESCRIBE "facts"').fetchall()]
    assert columns == ["cohort", "user_id", "score", "label", "n_items"]
    old = read_partition(warehouse, FACTS, "2024-01")
    assert old["label"].to_list() == [None, None]
    new = read_partition(warehouse, FACTS, "2024-02", columns=["user_id", "label", "n_items"])
    assert new.sort("user_id").rows() == [("u5", "新标签", 3), ("u6", "新标签", 3)]
    # an older writer (fewer columns) still works: missing columns are null
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 1))
    assert read_partition(warehouse, FACTS, "2024-01")["n_items"].to_list() == [None]


def test_failed_replace_rolls_back(warehouse: duckdb.DuckDBPyConnection) -> None:
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 2))
    bad = pl.DataFrame({"cohort": ["2024-01"], "user_id": ["u9"], "score": ["not a number"]})
    with pytest.raises(duckdb.Error):
        replace_partition(warehouse, FACTS, "2024-01", bad)
    assert read_partition(warehouse, FACTS, "2024-01")["user_id"].to_list() == ["u0", "u1"]
    unsafe = rows("2024-01", 1).with_columns(pl.lit(1).alias('x"; DROP TABLE facts; --'))
    with pytest.raises(UnsafeNameError):
        replace_partition(warehouse, FACTS, "2024-01", unsafe)
    assert read_partition(warehouse, FACTS, "2024-01").height == 2


def test_replace_rows_with_several_keys(warehouse: duckdb.DuckDBPyConnection) -> None:
    frame = rows("2024-01", 2).with_columns(pl.lit("e5").alias("model"))
    replace_rows(warehouse, VECTORS, frame, {"cohort": "2024-01", "model": "e5"})
    other = rows("2024-01", 1, start=7).with_columns(pl.lit("bge").alias("model"))
    replace_rows(warehouse, VECTORS, other, {"cohort": "2024-01", "model": "bge"})
    replace_rows(warehouse, VECTORS, frame.head(1), {"cohort": "2024-01", "model": "e5"})
    got = all_rows(warehouse, "vectors").sort("model", "user_id")
    assert got.select("model", "user_id").rows() == [("bge", "u7"), ("e5", "u0")]


@pytest.mark.parametrize(
    ("table", "cohort"),
    [("facts; DROP TABLE x", "2024-01"), ("Facts", "2024-01"), ("facts", "a'b")],
)
def test_warehouse_refuses_unsafe_names(
    warehouse: duckdb.DuckDBPyConnection, table: str, cohort: str
) -> None:
    with pytest.raises(UnsafeNameError):
        replace_partition(warehouse, StoredTable(table, FACTS_SCHEMA, ()), cohort, rows(cohort, 1))
    replace_partition(warehouse, FACTS, "2024-01", rows("2024-01", 1))
    with pytest.raises(UnsafeNameError):
        read_partition(warehouse, StoredTable(table, FACTS_SCHEMA, ()), cohort)
    with pytest.raises(UnsafeNameError):
        replace_rows(warehouse, FACTS, rows("2024-01", 1), {"bad key": "x"})


def test_read_partition_of_missing_table_is_empty(warehouse: duckdb.DuckDBPyConnection) -> None:
    nothing_yet = StoredTable("nothing_yet", FACTS_SCHEMA, ())
    missing = read_partition(warehouse, nothing_yet, "2024-01")
    assert missing.height == 0 and dict(missing.schema) == FACTS_SCHEMA
    some = read_partition(warehouse, nothing_yet, "2024-01", ["user_id", "score"])
    assert dict(some.schema) == {"user_id": pl.String, "score": pl.Float64}


def test_history_rows_are_unique_per_key_whichever_run_wrote_them() -> None:
    """Two runs profiling the same user, input and model at once leave one row, not two;
    another input keeps its own row (history)."""
    con = duckdb.connect()
    key = ("user_id", "input_key", "llm_identity")
    hist = StoredTable("hist", {c: pl.String for c in ("cohort", *key, "run_id")}, key)
    rows = pl.DataFrame(
        {"cohort": ["c"], "user_id": ["u1"], "input_key": ["a"], "llm_identity": ["m"]}
    )
    append_rows(con, hist, rows.with_columns(run_id=pl.lit("run-1")))
    append_rows(con, hist, rows.with_columns(run_id=pl.lit("run-2")))
    append_rows(con, hist, rows.with_columns(run_id=pl.lit("run-3"), input_key=pl.lit("b")))
    stored = con.execute("SELECT input_key, run_id FROM hist ORDER BY 1").fetchall()
    assert stored == [("a", "run-2"), ("b", "run-3")]


def test_assets_and_commands_name_stored_tables_only_through_the_registry() -> None:
    """Every read and write of a stored table passes a registry entry (its schema comes with
    it), never a bare name."""
    import ast

    store_calls = {"read_partition", "replace_partition", "replace_rows", "append_rows"}
    store_calls |= {"partition_shape", "table_exists", "stored_table", "read_table"}
    package = Path(__file__).resolve().parents[1] / "profiling_assets"
    bare = []
    for path in sorted([*package.glob("assets/*.py"), *package.glob("commands/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id in store_calls and len(node.args) > 1:
                if isinstance(node.args[1], ast.Constant):
                    bare.append(f"{path.name}:{node.lineno} {node.func.id}")
    assert bare == []


def test_the_registry_covers_every_table_the_pipeline_stores() -> None:
    from profiling_assets.core.contract import SOURCE_TABLES
    from profiling_assets.stores.tables import TABLES

    names = [table.name for table in TABLES]
    assert len(names) == len(set(names))
    assert [t.name for t in TABLES.source] == list(SOURCE_TABLES)
    for table in TABLES:
        assert set(table.key) <= set(table.schema), table.name
        assert table.empty().columns == table.columns
    assert TABLES.named("user_profiles") is TABLES.profiles
    with pytest.raises(KeyError):
        TABLES.named("nothing_yet")
