"""Model upgrade → exactly the affected assets change → backfill over every cohort; schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from profiling_assets.automation import (
    SCHEDULE_NAME,
    backfill_selection,
    code_changed_assets,
    launch_backfill,
)
from profiling_assets.config import Settings
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.stores.source import list_cohorts, open_source
from profiling_assets.synth import generate_tables, write_source

UP_TO_EVIDENCE = [
    dg.AssetKey(k)
    for k in (
        "users",
        "sales",
        "behaviour",
        "chat",
        "rejected_rows",
        "user_documents",
        "document_chunks",
        "chunk_embeddings",
        "profile_evidence",
    )
]


def _keys(keys) -> set[str]:
    return {k.to_user_string() for k in keys}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data)
    write_source(settings.source_path, generate_tables(users=3, seed=11, months=2))
    with open_source(settings.source_path) as con:
        cohorts = list_cohorts(con)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("cohort", cohorts)
        job = build_definitions(settings).resolve_job_def(PROFILE_JOB)
        for cohort in cohorts:
            result = job.execute_in_process(
                partition_key=cohort, instance=instance, asset_selection=UP_TO_EVIDENCE
            )
            assert result.success
        yield settings, instance, cohorts


def test_unchanged_config_changes_nothing(materialized) -> None:
    settings, instance, _ = materialized
    defs = build_definitions(settings)
    assert code_changed_assets(defs, instance) == set()
    assert backfill_selection(defs, set()) == []


def test_embedder_upgrade_marks_vectors_and_evidence_and_backfills_everything_below(
    materialized,
) -> None:
    settings, instance, cohorts = materialized
    upgraded = settings.model_copy(
        update={"embedder_backend": "flagembedding", "embedder_model": "BAAI/bge-m3"}
    )
    defs = build_definitions(upgraded)
    changed = code_changed_assets(defs, instance)
    assert _keys(changed) == {"chunk_embeddings", "profile_evidence"}
    selection = backfill_selection(defs, changed)
    assert _keys(selection) == {
        "chunk_embeddings",
        "profile_evidence",
        "user_profiles",
        "user_segments",
        "cohort_report",
        "profile_quality",
    }
    backfill_id = launch_backfill(defs, instance, selection, title="test upgrade")
    backfill = instance.get_backfill(backfill_id)
    assert backfill is not None
    assert _keys(backfill.asset_selection) == _keys(selection)
    targeted = backfill.asset_backfill_data.target_subset
    for key in selection:
        assert set(targeted.get_partitions_subset(key).get_partition_keys()) == set(cohorts)


def test_retrieval_setting_marks_only_evidence(materialized) -> None:
    settings, instance, _ = materialized
    defs = build_definitions(settings.model_copy(update={"evidence_top_n": 3}))
    assert _keys(code_changed_assets(defs, instance)) == {"profile_evidence"}


def test_schedule_requests_one_run_per_cohort(materialized) -> None:
    settings, instance, cohorts = materialized
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Asia/Shanghai"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 26, 18, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    requests = schedule.evaluate_tick(context).run_requests or []
    assert sorted(r.partition_key for r in requests) == sorted(cohorts)
    assert len({r.run_key for r in requests}) == len(cohorts)


def test_schedule_state_is_configurable() -> None:
    running = Settings(schedule_running=True, schedule_cron="30 3 * * *")
    schedule = build_definitions(running).resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "30 3 * * *"


def test_a_half_finished_rebuild_is_still_found(materialized) -> None:
    """Runs last: it rebuilds one upstream partition, leaving everything below it stale (as a
    backfill stopped half-way does); `backfill --stale` must still find what is left."""
    settings, instance, cohorts = materialized
    defs = build_definitions(settings)
    job = defs.resolve_job_def(PROFILE_JOB)
    result = job.execute_in_process(
        partition_key=cohorts[0], instance=instance, asset_selection=[dg.AssetKey("user_documents")]
    )
    assert result.success
    changed = code_changed_assets(defs, instance)
    assert _keys(changed) == {"document_chunks"}
    selection = _keys(backfill_selection(defs, changed))
    assert {"document_chunks", "chunk_embeddings", "profile_evidence"} <= selection
    assert "user_documents" not in selection
