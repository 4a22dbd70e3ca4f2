"""The local Dagster instance under `data/dagster_home/`, with the concurrency pools set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from profiling_assets.config import Settings
from profiling_assets.pools import POOL_LIMITS

REPO_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def prepare_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with the repo's dagster.yaml and point this process at it."""
    home = settings.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if REPO_DAGSTER_YAML.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def open_instance(settings: Settings) -> dg.DagsterInstance:
    prepare_dagster_home(settings)
    instance = dg.DagsterInstance.get()
    for pool, limit in POOL_LIMITS.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return instance
