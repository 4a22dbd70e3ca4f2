"""The Dagster instance on Postgres, against a real PostgreSQL server started for the session:
the shipped `deploy/dagster-postgres.yaml` passes `dagster instance info`, `open_instance`
sets the pool slots in the database, and doctor says in one sentence what is wrong. Also: every
YAML file under deploy/ loads, and the Helm values use the official chart's key names."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from profiling_assets.commands.doctor import check_instance_storage
from profiling_assets.commands.instance import REPO_DAGSTER_YAML, open_instance
from profiling_assets.commands.instance_postgres import (
    DEPLOY_POSTGRES_DB,
    PG_ENV,
    PSYCOPG2_SCHEME,
    check_instance_postgres,
)
from profiling_assets.commands.local_services import (
    POSTGRES_YAML,
    REPO,
    MissingService,
    PostgresServer,
    free_port,
    postgres_binaries,
    postgres_home,
    running_redis,
)
from profiling_assets.config import Settings
from profiling_assets.pools import GPU_POOL, LANCEDB_POOL, pool_limits
from profiling_assets_tests.conftest import unavailable

pytestmark = pytest.mark.scale_out

DEPLOY = REPO / "deploy"
DAGSTER_CLI = Path(sys.executable).with_name("dagster")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- the server and the instance on it ------------------------------------------------------
def test_the_postgres_fixture_serves_its_database(postgres: PostgresServer) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host=postgres.host,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        dbname=postgres.db,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("select current_user, current_database(), inet_server_addr()::text")
            user, db, address = cursor.fetchone()
    finally:
        connection.close()
    assert (user, db) == (postgres.user, postgres.db)
    assert address.startswith("127.0.0.1")  # loopback only
    assert set(postgres.env) == set(PG_ENV.values())


def test_the_redis_fixture_serves_loopback_and_keeps_nothing(redis: str) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis)
    try:
        assert client.ping()
        assert redis.startswith("redis://127.0.0.1:")
        # A broker for the test only: no snapshot, no append-only file left behind.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_a_missing_server_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(MissingService, match=r"apt-get install -y postgresql$"):
        postgres_binaries(debian_root=tmp_path)
    with pytest.raises(MissingService, match=r"apt-get install -y redis-server$"):
        with running_redis():
            pass


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_without_a_server_ci_fails_and_elsewhere_the_tests_skip(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y redis-server"):
        unavailable(MissingService("redis-server not found: apt-get install -y redis-server"))


def test_dagster_instance_info_accepts_the_postgres_yaml(
    postgres_db: PostgresServer, tmp_path: Path
) -> None:
    home, env = postgres_home(tmp_path / "home", postgres_db)
    done = subprocess.run(
        [str(DAGSTER_CLI), "instance", "info"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    configuration = done.stdout.split("Instance configuration:")[1].split("Storage schema")[0]
    info = yaml.safe_load(configuration.split("\n", 2)[2])  # past the underline
    assert info["run_storage"] == "PostgresRunStorage"
    assert info["event_log_storage"] == "PostgresEventLogStorage"
    assert info["schedule_storage"] == "PostgresScheduleStorage"
    # The instance runs with the repo's limits: pools, one run per partition, slot freeing.
    repo = _load(REPO_DAGSTER_YAML)
    for setting in ("concurrency", "run_monitoring", "telemetry"):
        assert info[setting] == repo[setting]
    # The tables were created and are current; the password is in neither file nor output.
    schema = yaml.safe_load(done.stdout.split("Storage schema state:")[1].split("\n", 2)[2])
    for state in schema["schema"].values():
        assert state["current"] == state["latest"]
    assert postgres_db.password not in (home / "dagster.yaml").read_text(encoding="utf-8")
    assert postgres_db.password not in done.stdout + done.stderr


def _postgres_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_open_instance_sets_the_pool_slots_in_postgres(
    postgres_db: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = postgres_home(tmp_path / "home", postgres_db)
    _postgres_env(monkeypatch, env)
    settings = Settings(data_dir=tmp_path / "data", gpu_slots=4)  # four GPU workers
    with open_instance(settings) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    # Read back through a second instance on the same database, as another machine would.
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as other:
        assert pool_limits(settings) == {GPU_POOL: 4, LANCEDB_POOL: 1}
        for pool, limit in pool_limits(settings).items():
            info = other.event_log_storage.get_concurrency_info(pool)
            assert (info.slot_count, info.using_default_limit) == (limit, False)


def test_a_pool_limit_set_on_the_users_postgres_instance_is_kept(
    postgres_db: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = postgres_home(tmp_path / "home", postgres_db)
    _postgres_env(monkeypatch, env)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as own:
        own.event_log_storage.set_concurrency_slots(GPU_POOL, 3)  # e.g. three model servers
    with open_instance(Settings(data_dir=tmp_path / "data")) as instance:
        storage = instance.event_log_storage
        assert storage.get_concurrency_info(GPU_POOL).slot_count == 3
        assert storage.get_concurrency_info(LANCEDB_POOL).slot_count == 1


# --- doctor -----------------------------------------------------------------------------------
def test_doctor_connects_to_the_live_server(
    postgres_db: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = postgres_home(tmp_path / "home", postgres_db)
    _postgres_env(monkeypatch, env)
    [finding] = check_instance_storage(Settings(data_dir=tmp_path / "data"))
    assert finding.ok and finding.blocking, finding
    assert f"已连接 {postgres_db.user}@127.0.0.1:{postgres_db.port}/{postgres_db.db}" in (
        finding.detail
    )


@pytest.mark.parametrize(
    ("change", "problem", "says"),
    [
        ({"DAGSTER_PG_PASSWORD": "not-the-password"}, "auth", ["拒绝", "DAGSTER_PG_PASSWORD"]),
        ({"DAGSTER_PG_PORT": "closed"}, "unreachable", ["连接被拒绝", "DAGSTER_PG_PORT"]),
        ({"DAGSTER_PG_DB": "no_such_db"}, "database", ["no_such_db", "DAGSTER_PG_DB"]),
        ({"DAGSTER_PG_PASSWORD": None}, "config", ["DAGSTER_PG_PASSWORD 未设置"]),
    ],
    ids=["wrong-password", "closed-port", "missing-database", "unset-variable"],
)
def test_doctor_says_in_one_sentence_what_is_wrong(
    postgres: PostgresServer,
    tmp_path: Path,
    change: dict[str, str | None],
    problem: str,
    says: list[str],
) -> None:
    home, env = postgres_home(tmp_path / "home", postgres)
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = str(free_port()) if value == "closed" else value
    checked = check_instance_postgres(home / "dagster.yaml", env)
    assert checked is not None
    uses_postgres, result = checked
    assert uses_postgres and not result.ok
    assert result.problem == problem, result.detail
    for words in says:
        assert words in result.detail
    assert "\n" not in result.detail  # one sentence, one line
    assert postgres.password not in result.detail


def test_doctor_names_the_driver_a_bare_postgresql_scheme_needs(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Without `scheme`, SQLAlchemy picks its default Postgres driver (psycopg 3 since 2.1),
    which dagster-postgres does not install: doctor says so instead of "connected"."""
    from sqlalchemy.engine import make_url

    home, env = postgres_home(tmp_path / "home", postgres)
    shipped = _load(home / "dagster.yaml")
    del shipped["storage"]["postgres"]["postgres_db"]["scheme"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(shipped), encoding="utf-8")
    checked = check_instance_postgres(home / "dagster.yaml", env)
    assert checked is not None
    _, result = checked
    default_driver = make_url("postgresql://").get_dialect().driver
    if importlib.util.find_spec(default_driver) is None:
        assert (result.ok, result.problem) == (False, "driver")
        assert f"scheme: {PSYCOPG2_SCHEME}" in result.detail
    else:  # an environment that has the default driver connects either way
        assert result.ok, result.detail


def test_doctor_on_the_sqlite_default_needs_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in PG_ENV.values():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_bytes(REPO_DAGSTER_YAML.read_bytes())
    [finding] = check_instance_storage(settings)
    assert finding.ok and not finding.blocking
    assert finding.detail.startswith("SQLite")


# --- the deploy kit ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_under_deploy_loads(path: Path) -> None:
    assert isinstance(_load(path), dict)


def test_the_postgres_yaml_differs_from_the_repos_only_by_its_storage() -> None:
    shipped = _load(POSTGRES_YAML)
    storage = shipped.pop("storage")
    assert shipped == _load(REPO_DAGSTER_YAML)
    # Every connection field from the environment, under the names doctor checks.
    assert storage == {"postgres": {"postgres_db": DEPLOY_POSTGRES_DB}}


# The official chart's value names, from its schema in dagster-io/dagster:
# helm/dagster/schema/schema/charts/dagster/values.py and subschema/{postgresql,concurrency}.py,
# dagster_user_deployments/subschema/user_deployments.py (read 2026-12-02).
CHART_TOP_LEVEL = {
    "dagsterWebserver", "dagster-user-deployments", "postgresql",
    "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis",
    "flower", "ingress", "imagePullSecrets", "computeLogManager", "scheduler", "runLauncher",
    "pythonLogs", "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount",
    "global", "retention", "concurrency", "additionalInstanceConfig",
}  # fmt: skip
CHART_POSTGRESQL = {
    "postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
    "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service",
}  # fmt: skip
CHART_GLOBAL = {
    "postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName",
    "dagsterInstanceConfigMap",
}  # fmt: skip
CHART_USER_DEPLOYMENT = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations",
    "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
    "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
    "volumes", "schedulerName", "initContainers", "sidecarContainers", "deploymentStrategy",
}  # fmt: skip
CHART_K8S_RUN_LAUNCHER = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources",  # resources: dagster 0.14.13 release notes
}  # fmt: skip


def test_the_helm_values_use_the_official_charts_keys() -> None:
    values = _load(DEPLOY / "helm-values.yaml")
    assert set(values) <= CHART_TOP_LEVEL
    assert set(values["postgresql"]) <= CHART_POSTGRESQL
    assert set(values["global"]) <= CHART_GLOBAL
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]["k8sRunLauncher"]) <= CHART_K8S_RUN_LAUNCHER
    users = values["dagster-user-deployments"]
    assert users["enabled"] is True
    [deployment] = users["deployments"]
    assert set(deployment) <= CHART_USER_DEPLOYMENT
    assert deployment["codeServerArgs"] == ["-m", "profiling_assets.definitions"]
    assert deployment["envSecrets"], "the app's secrets come from a Kubernetes secret"


def test_the_helm_concurrency_is_the_instances() -> None:
    """The chart writes its own dagster.yaml: its concurrency values must say what ours does."""
    values = _load(DEPLOY / "helm-values.yaml")["concurrency"]
    ours = _load(REPO_DAGSTER_YAML)["concurrency"]
    assert values["enabled"] is True
    assert values["pools"] == {
        "defaultLimit": ours["pools"]["default_limit"],
        "granularity": ours["pools"]["granularity"],
    }
    assert values["runs"] == {
        "maxConcurrentRuns": ours["runs"]["max_concurrent_runs"],
        "tagConcurrencyLimits": ours["runs"]["tag_concurrency_limits"],
    }


def test_the_image_serves_the_code_location_the_chart_names() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in dockerfile
    assert '".[scale-out]"' in dockerfile or "'.[scale-out]'" in dockerfile
    assert '"code-server", "start", "-m", "profiling_assets.definitions"' in dockerfile
