"""Fixtures the test modules share: data dirs with the chain done up to the evidence (made
once a session, copied for a test that writes), and for the scale-out tests a real PostgreSQL
and a real Redis, one of each per session, started only when a test asks for them (see
commands/local_services.py). Plain helpers for the same setup are in sample_runs.py."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from profiling_assets.commands.local_services import (
    MissingService,
    PostgresServer,
    create_database,
    running_postgres,
    running_redis,
)

EVIDENCE_SEED = 5


@pytest.fixture(scope="session")
def evidence_ready(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], tuple[Path, str]]:
    """`evidence_ready(users)`: (a data dir, its one cohort) holding a sample source of `users`
    users with everything up to `profile_evidence` done (offline embedder). Made once a
    session per size and shared: a test that writes works on `evidence_copy` instead."""
    # Imported here: a test session that never asks for these fixtures skips their imports.
    from profiling_assets.config import Settings
    from profiling_assets_tests.bad_inputs import run_job
    from profiling_assets_tests.sample_runs import cohort_instance, dated, write_sample

    made: dict[int, tuple[Path, str]] = {}

    def make(users: int) -> tuple[Path, str]:
        if users not in made:
            data = tmp_path_factory.mktemp(f"evidence-{users}")
            cohorts = dated(write_sample(data / "source.duckdb", users=users, seed=EVIDENCE_SEED))
            assert len(cohorts) == 1
            instance = cohort_instance(cohorts)
            result = run_job(Settings(data_dir=data), cohorts[0], instance, upto="profile_evidence")
            assert result.success
            made[users] = data, cohorts[0]
        return made[users]

    return make


@pytest.fixture
def evidence_copy(
    evidence_ready: Callable[[int], tuple[Path, str]], tmp_path: Path
) -> Callable[[int], tuple[Path, str]]:
    """`evidence_copy(users)`: the data dir of `evidence_ready(users)` copied to this test's
    `tmp_path / "data"`, and its cohort."""

    def copy(users: int) -> tuple[Path, str]:
        template, cohort = evidence_ready(users)
        shutil.copytree(template, tmp_path / "data")
        return tmp_path / "data", cohort

    return copy


def unavailable(error: MissingService) -> NoReturn:
    """Under CI a missing server is a failure (the scale-out tests must run there); elsewhere
    the tests that need it are skipped with the one line that says what to install."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true and {error}", pytrace=False)
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session and its database `dagster`."""
    try:
        with running_postgres() as server:
            yield server
    except MissingService as error:
        unavailable(error)


@pytest.fixture
def postgres_db(postgres: PostgresServer) -> PostgresServer:
    """A fresh database on the session's server, so each test's instance starts empty."""
    return create_database(postgres, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis() -> Iterator[str]:
    """A Redis server for the session (nothing persisted); its URL."""
    try:
        with running_redis() as url:
            yield url
    except MissingService as error:
        unavailable(error)
