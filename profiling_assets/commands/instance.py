"""The Dagster instance the CLI works on, with the concurrency pools set.

A user's own `DAGSTER_HOME` wins: it is used as it is and its `dagster.yaml` is never
written. Only when none is set does the CLI make one under `data/dagster_home/`, seeded
once with the repo's `dagster.yaml`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from profiling_assets.config import Settings
from profiling_assets.pools import pool_limits

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def user_dagster_home() -> Path | None:
    home = os.environ.get("DAGSTER_HOME", "").strip()
    return Path(home) if home else None


def dagster_home(settings: Settings) -> Path:
    """The instance directory every command uses: the user's, else ours under data/."""
    return (user_dagster_home() or settings.dagster_home).resolve()


def logs_dir(settings: Settings) -> Path:
    """Where the event log and the webserver's output go instead of the terminal."""
    return settings.data_dir / "logs"


def prepare_dagster_home(settings: Settings) -> Path:
    """Make sure the instance directory exists; seed our own one with the repo's
    dagster.yaml when it has none (a file already there, edited or not, is kept)."""
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if user_dagster_home() is None and not target.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, target)
    return home


@contextmanager
def _dagster_home_env(home: Path) -> Iterator[None]:
    """`DagsterInstance.get()` reads DAGSTER_HOME: point it at `home` for the call only, so
    the process environment (and the next command in the same process) stays as it was."""
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before


def open_instance(settings: Settings) -> dg.DagsterInstance:
    home = prepare_dagster_home(settings)
    with _dagster_home_env(home):
        instance = dg.DagsterInstance.get()
    ours = user_dagster_home() is None
    for pool, limit in pool_limits(settings).items():
        # A pool limit the user set on their own instance is theirs to keep.
        if ours or instance.event_log_storage.get_concurrency_info(pool).slot_count == 0:
            instance.event_log_storage.set_concurrency_slots(pool, limit)
    return instance
