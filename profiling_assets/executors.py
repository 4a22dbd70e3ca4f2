"""Where a run's steps execute: in the run's own process (the default), or on Celery workers
started with Dagster's own `dagster-celery worker start` (`PROFILING_EXECUTOR=celery`).

With Celery, steps that call a model (embeddings, evidence, the LLM) carry the `gpu` queue
tag and every other step goes to Dagster's default `dagster` queue, so GPU machines take
only model work. Concurrency pools still hold: the Celery executor claims pool slots from
the instance (Postgres, shared by every worker) before it submits a step.

The broker URL is referenced by the name of its environment variable, never by value, so a
password in it reaches neither the run config stored in the instance nor a file.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from profiling_assets.config import Settings

CELERY_QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
GPU_QUEUE = "gpu"
CPU_QUEUE = "dagster"  # dagster-celery's default queue
BROKER_ENV = "PROFILING_CELERY_BROKER"

# A worker killed mid-step must not lose the step: acknowledge a task only once it finished,
# hand it back when the worker process dies, and let the broker give an unacknowledged task
# to another worker after `visibility_timeout` seconds (Redis' default is an hour). A step
# longer than that would run twice, which the idempotent writes allow; a cohort's LLM step is
# kept well under it by the batch size.
VISIBILITY_TIMEOUT_S = 60
CELERY_CONFIG_SOURCE: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
    "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
    "broker_connection_retry_on_startup": True,
}


def model_step_tags() -> dict[str, str]:
    """Op tags of a step that calls a model: the queue GPU workers listen on."""
    return {CELERY_QUEUE_TAG: GPU_QUEUE}


# The executor config as the run process and the workers both read it: the broker also keeps
# the results. `deploy/celery-worker.yaml` holds the same under `execution.config`.
CELERY_EXECUTOR_CONFIG: dict[str, Any] = {
    "broker": {"env": BROKER_ENV},
    "backend": {"env": BROKER_ENV},
    "config_source": CELERY_CONFIG_SOURCE,
}


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    if settings.executor == "celery":
        from dagster_celery import celery_executor  # the scale-out extra

        return celery_executor.configured(CELERY_EXECUTOR_CONFIG)
    # One process per run: the chain is linear, so steps gain nothing from processes of their
    # own, and the models load once per run.
    return dg.in_process_executor
