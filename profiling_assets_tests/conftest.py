"""Fixtures shared by the scale-out tests: a real PostgreSQL and a real Redis, one of each per
session, started only when a test asks for them (see commands/local_services.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from profiling_assets.commands.local_services import (
    MissingService,
    PostgresServer,
    create_database,
    running_postgres,
    running_redis,
)


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
