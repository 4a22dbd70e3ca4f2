"""Past one machine, with real parts started here: a backfill through a Postgres instance, a
Dagster daemon and two Celery workers that share nothing but Postgres, Redis and the storage
folder gives what one process gives; a worker killed mid-step costs a re-run of that step on
the other worker and nothing else."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from profiling_assets.commands.local_cluster import (
    LocalCluster,
    StepAttempt,
    cluster_settings_env,
    describe,
    running_cluster,
)
from profiling_assets.commands.local_services import PostgresServer
from profiling_assets.config import Settings
from profiling_assets.executors import VISIBILITY_TIMEOUT_S
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.stores.source import list_cohorts, open_source
from profiling_assets.synth import generate_tables, write_source
from profiling_assets_tests.test_shared_storage import QUERIES, _vectors, _warehouse_reads

pytestmark = [pytest.mark.scale_out, pytest.mark.slow]

MODEL_STEP = "user_profiles"
# A slot's cached prompt prefix depends on which user it served before, which differs between
# one process and two workers; the cached part changes floating-point sums and so, at times,
# an answer. Without it the offline model answers the same wherever a user runs.
REPEATABLE = {"llm_cache_prompt": False}
# Every run waits for the killed worker's task to come back from the broker once.
BACKFILL_TIMEOUT_S = 900 + VISIBILITY_TIMEOUT_S


def _source(root: Path) -> tuple[Path, list[str]]:
    source = root / "shared" / "source.duckdb"
    source.parent.mkdir(parents=True)
    write_source(source, generate_tables(users=8, seed=23, months=4))
    with open_source(source) as con:
        return source, list_cohorts(con)


def _single_process(root: Path, source: Path, cohorts: list[str]) -> Settings:
    """The reference: every cohort in one process, the default executor, its own storage."""
    settings = Settings(
        data_dir=root / "single", source=source, storage_uri=str(root / "ref"), **REPEATABLE
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("cohort", cohorts)
    job = build_definitions(settings).resolve_job_def(PROFILE_JOB)
    for cohort in cohorts:
        assert job.execute_in_process(partition_key=cohort, instance=instance).success
    return settings


def _kill_at_first_model_step(cluster: LocalCluster, backfill_id: str, worker: str) -> StepAttempt:
    """SIGKILL `worker` as soon as it reports taking a model step; that step's attempt."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        run_ids = [r.run_id for r in cluster.runs(backfill_id)]
        for attempt in cluster.step_attempts(run_ids):
            if attempt.worker == worker and attempt.step_key == MODEL_STEP:
                cluster.kill(worker)
                return attempt
        time.sleep(0.5)
    raise AssertionError(f"{worker} never took a model step")


def test_a_backfill_on_two_workers_matches_one_process_and_survives_a_killed_worker(
    tmp_path: Path, postgres_db: PostgresServer, redis: str
) -> None:
    source, cohorts = _source(tmp_path)
    assert len(cohorts) >= 4
    reference = _single_process(tmp_path, source, cohorts)
    storage = tmp_path / "shared" / "storage"
    repeatable = {f"PROFILING_{k.upper()}": str(v).lower() for k, v in REPEATABLE.items()}
    env = cluster_settings_env(redis, storage, source, gpu_slots=2, extra=repeatable)
    with running_cluster(tmp_path / "cluster", postgres_db, env, workers=2) as cluster:
        backfill_id = cluster.backfill(cohorts)
        victim = _kill_at_first_model_step(cluster, backfill_id, "w1")
        runs = cluster.wait(backfill_id, expected=len(cohorts), timeout_s=BACKFILL_TIMEOUT_S)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), describe(runs)
        attempts = cluster.step_attempts([r.run_id for r in runs])
        gpu_spans = cluster.step_spans([r.run_id for r in runs], "chunk_embeddings")

    # The killed step ran again, on the other worker, in the same run.
    again = [
        a
        for a in attempts
        if (a.run_id, a.step_key) == (victim.run_id, victim.step_key) and a.at > victim.at
    ]
    assert [a.worker for a in again] == ["w2"], attempts
    # Both workers took steps before the kill.
    assert {a.worker for a in attempts if a.at <= victim.at} == {"w1", "w2"}
    # The LanceDB pool (one writer) held across both workers: no two embedding steps at once.
    gpu_spans.sort()
    assert len(gpu_spans) == len(cohorts)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(gpu_spans)), gpu_spans

    # The same rows as one process: documents, chunks (ids), evidence, profiles, nothing twice.
    shared = Settings(data_dir=tmp_path / "reader", source=source, storage_uri=str(storage))
    single, spread = _warehouse_reads(reference), _warehouse_reads(shared)
    for name in QUERIES:
        assert spread[name] == single[name], name
    assert spread["documents"] and spread["chunks"] and spread["profiles"]
    on_single, on_spread = _vectors(reference), _vectors(shared)
    assert on_spread["chunk_id"].is_unique().all()
    assert on_spread.drop("vector").equals(on_single.drop("vector"))
    assert np.allclose(on_spread["vector"].to_list(), on_single["vector"].to_list(), atol=1e-5)
