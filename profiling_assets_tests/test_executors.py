"""Where steps run: the in-process default, or Celery workers with model steps on the `gpu`
queue; the workers' shipped settings equal the executor's."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from pydantic import ValidationError

from profiling_assets.commands.local_cluster import WORKER_YAML
from profiling_assets.config import Settings
from profiling_assets.executors import (
    CELERY_EXECUTOR_CONFIG,
    CELERY_QUEUE_TAG,
    GPU_QUEUE,
    VISIBILITY_TIMEOUT_S,
)
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.pools import GPU_POOL, LANCEDB_POOL, pool_limits

MODEL_STEPS = {"chunk_embeddings", "profile_evidence", "user_profiles"}


def test_the_workers_yaml_holds_the_executors_celery_settings() -> None:
    shipped = yaml.safe_load(WORKER_YAML.read_text(encoding="utf-8"))["execution"]["config"]
    assert shipped == CELERY_EXECUTOR_CONFIG
    # The broker is named by its variable, never written down.
    assert shipped["broker"] == {"env": "PROFILING_CELERY_BROKER"}
    options = shipped["config_source"]
    assert options["task_acks_late"] and options["task_reject_on_worker_lost"]
    assert options["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT_S


def test_celery_needs_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="PROFILING_CELERY_BROKER"):
        Settings(data_dir=tmp_path, executor="celery")


def _job_and_assets(settings: Settings) -> tuple[dg.JobDefinition, dict[str, dg.AssetsDefinition]]:
    defs = build_definitions(settings)
    assets = {
        key.to_user_string(): a for a in defs.resolve_asset_graph().assets_defs for key in a.keys
    }
    return defs.resolve_job_def(PROFILE_JOB), assets


def test_the_default_runs_every_step_in_the_runs_process(tmp_path: Path) -> None:
    job, _ = _job_and_assets(Settings(data_dir=tmp_path))
    assert job.executor_def.name == dg.in_process_executor.name


def test_celery_sends_model_steps_to_the_gpu_queue_and_the_rest_to_the_default(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, executor="celery", celery_broker="redis://h:6379/0")
    job, assets = _job_and_assets(settings)
    assert job.executor_def.name == "celery"
    queued = {
        name for name, asset in assets.items() if asset.op.tags.get(CELERY_QUEUE_TAG) == GPU_QUEUE
    }
    assert queued == MODEL_STEPS
    assert all(CELERY_QUEUE_TAG not in a.op.tags for n, a in assets.items() if n not in queued)


def test_the_gpu_pool_has_one_slot_per_gpu_worker(tmp_path: Path) -> None:
    assert pool_limits(Settings(data_dir=tmp_path)) == {GPU_POOL: 1, LANCEDB_POOL: 1}
    assert pool_limits(Settings(data_dir=tmp_path, gpu_slots=4)) == {GPU_POOL: 4, LANCEDB_POOL: 1}
