"""The bench's workers row: one backfill on 2 Celery workers against the same backfill on 1,
each worker pinned to one CPU (so its offline model server runs one thread), measured in one
run on a local cluster of real parts (`local_cluster`: Postgres, Redis, a daemon, workers).

profiles/s is the backfill's profiles over its wall time, submit to last run ended. The split
of that time says where it goes when 2 workers fall short of 2x: the model steps' own time
(summed over runs), and the rest (run launches, queueing, the other steps, model loads).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from profiling_assets.commands.local_cluster import cluster_settings_env, running_cluster
from profiling_assets.commands.local_services import (
    MissingService,
    create_database,
    running_postgres,
    running_redis,
)
from profiling_assets.config import Settings
from profiling_assets.stores.source import list_cohorts, open_source
from profiling_assets.stores.warehouse_access import open_warehouse
from profiling_assets.synth import generate_tables, write_source

TARGET_SPEEDUP = 1.6
MODEL_STEPS = ("chunk_embeddings", "profile_evidence", "user_profiles")
TIMEOUT_S = 1800.0


def _one_cluster(
    root: Path, source: Path, cohorts: list[str], workers: int, postgres: Any, redis: str
) -> dict[str, float]:
    storage = root / "storage"
    env = cluster_settings_env(
        redis, storage, source, gpu_slots=workers, extra={"PROFILING_LLM_PARALLEL": "1"}
    )
    database = create_database(postgres, f"bench_workers_{workers}")
    pinned = [[cpu] for cpu in range(workers)]
    with running_cluster(root, database, env, workers, cpus_per_worker=pinned) as cluster:
        started = time.monotonic()
        backfill_id = cluster.backfill(cohorts)
        runs = cluster.wait(backfill_id, expected=len(cohorts), timeout_s=TIMEOUT_S)
        seconds = time.monotonic() - started
        spans = cluster.all_step_spans([r.run_id for r in runs])
        failed = sum(1 for r in runs if not r.is_success)
    reader = Settings(data_dir=root / "reader", source=source, storage_uri=str(storage))
    with open_warehouse(reader) as con:
        profiles = con.execute("SELECT count(DISTINCT user_id) FROM user_profiles").fetchall()[0][0]
    step_seconds: dict[str, float] = {}
    for key, (start, end) in spans:
        step_seconds[key] = step_seconds.get(key, 0.0) + end - start
    llm_seconds = step_seconds.get("user_profiles", 0.0)
    model_seconds = sum(step_seconds.get(k, 0.0) for k in MODEL_STEPS)
    worker_seconds = seconds * workers
    return {
        "workers": float(workers),
        "seconds": seconds,
        "profiles": float(profiles),
        "profiles_per_s": profiles / seconds if seconds else 0.0,
        "llm_step_seconds": llm_seconds,
        "other_seconds_share": 1 - llm_seconds / worker_seconds if seconds else 0.0,
        # Where the workers' time went: model steps, the other steps, and neither (waiting
        # for a run to launch, a step to be queued, a pool slot, or a step's own set-up).
        "model_steps_share": model_seconds / worker_seconds if seconds else 0.0,
        "other_steps_share": (sum(step_seconds.values()) - model_seconds) / worker_seconds
        if seconds
        else 0.0,
        "step_seconds": step_seconds,
        "failed_runs": float(failed),
    }


def workers_speedup(work_dir: Path, users: int, months: int = 4) -> dict[str, Any]:
    """profiles/s on 2 workers against 1, same source; `{"skipped": reason}` where PostgreSQL
    or Redis is not installed (the row then says what to install)."""
    source = work_dir / "workers_source.duckdb"
    write_source(source, generate_tables(users=users, seed=31, months=months))
    with open_source(source) as con:
        cohorts = [c for c in list_cohorts(con) if c != "unassigned"]
    try:
        with running_postgres() as postgres, running_redis() as redis:
            one = _one_cluster(work_dir / "workers_1", source, cohorts, 1, postgres, redis)
            two = _one_cluster(
                work_dir / "workers_2", source, cohorts, 2, postgres, redis[:-1] + "1"
            )
    except MissingService as error:
        return {"skipped": str(error)}
    return {
        "cohorts": len(cohorts),
        "one_worker": one,
        "two_workers": two,
        "speedup": two["profiles_per_s"] / one["profiles_per_s"] if one["profiles_per_s"] else 0.0,
        "target_speedup": TARGET_SPEEDUP,
    }


def workers_lines(row: dict[str, Any]) -> list[str]:
    label = "profiles/s, 2 Celery workers vs 1 (each pinned to 1 CPU, own offline model)"
    if "skipped" in row:
        return [f"| {label} | not measured: {row['skipped']} | ≥ {TARGET_SPEEDUP}× |"]
    one, two = row["one_worker"], row["two_workers"]
    return [
        f"| {label}, {row['cohorts']} cohorts | {two['profiles_per_s']:.3f} / "
        f"{one['profiles_per_s']:.3f} = **{row['speedup']:.2f}×** "
        f"({two['profiles']:.0f} profiles in {two['seconds']:.0f} s vs {one['seconds']:.0f} s) "
        f"| ≥ {TARGET_SPEEDUP}× |",
        "| … worker time in model steps / other steps / neither (launch, queue, pools, set-up), "
        f"1 worker → 2 | {_split(one)} → {_split(two)} | — |",
    ]


def _split(figures: dict[str, Any]) -> str:
    model, other = figures["model_steps_share"], figures["other_steps_share"]
    return f"{model:.2f} / {other:.2f} / {1 - model - other:.2f}"
