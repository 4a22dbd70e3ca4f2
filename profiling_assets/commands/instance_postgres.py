"""The Dagster instance on Postgres (`deploy/dagster-postgres.yaml`): the settings it reads and
the connection check behind `profiling-assets doctor`, which says in one sentence what is wrong.

dagster-postgres (and its psycopg2) is the optional `scale-out` extra: nothing here imports it
until a check needs it, so the single-machine install never does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr

# The environment variables `deploy/dagster-postgres.yaml` reads, per `postgres_db` field. The
# official Helm chart sets DAGSTER_PG_PASSWORD from its secret under the same name.
PG_ENV: dict[str, str] = {
    "username": "DAGSTER_PG_USERNAME",
    "password": "DAGSTER_PG_PASSWORD",
    "hostname": "DAGSTER_PG_HOST",
    "db_name": "DAGSTER_PG_DB",
    "port": "DAGSTER_PG_PORT",
}
# The driver, named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which
# dagster-postgres does not install (it brings psycopg2), so without it the instance fails to
# open with "No module named 'psycopg'".
PSYCOPG2_SCHEME = "postgresql+psycopg2"
# The `postgres_db` block of the shipped file, as Dagster reads it: every connection field
# from the environment, so no password (or host) is ever written into a file.
DEPLOY_POSTGRES_DB: dict[str, object] = {
    **{field: {"env": name} for field, name in PG_ENV.items()},
    "scheme": PSYCOPG2_SCHEME,
}
DEFAULT_PORT = 5432
CONNECT_TIMEOUT_S = 3

Problem = Literal["config", "driver", "unreachable", "auth", "database", "other"]


class PostgresConfigError(ValueError):
    """The instance's Postgres settings cannot be read: the message is the sentence to show."""


class PgTarget(BaseModel):
    """Where the instance's Postgres is, resolved from dagster.yaml and the environment, and
    for each field where it was set (an environment variable, or the file itself)."""

    model_config = ConfigDict(frozen=True)

    scheme: str  # the SQLAlchemy URL scheme Dagster opens it with
    host: str
    port: int
    user: str
    password: SecretStr
    db: str
    origin: dict[str, str]  # field -> "DAGSTER_PG_HOST" or "dagster.yaml 的 hostname"


class PgCheck(BaseModel):
    """The outcome of `check_postgres`: ok, or which kind of problem with its one sentence."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    problem: Problem | None
    detail: str


def postgres_storage(instance_yaml: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Postgres block (`postgres_db` / `postgres_url`) of an instance's dagster.yaml, or
    None when its storage is elsewhere (SQLite by default). Both spellings Dagster accepts:
    one `storage: postgres:` block, or per-storage blocks with a `dagster_postgres` module."""
    storage = instance_yaml.get("storage")
    if isinstance(storage, Mapping) and isinstance(storage.get("postgres"), Mapping):
        return storage["postgres"]
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        block = instance_yaml.get(key)
        if isinstance(block, Mapping) and str(block.get("module", "")).startswith(
            "dagster_postgres"
        ):
            config = block.get("config")
            return config if isinstance(config, Mapping) else {}
    return None


def read_instance_storage(dagster_yaml: Path) -> Mapping[str, Any] | None:
    """`postgres_storage` of the file at `dagster_yaml`; None when there is no such file."""
    if not dagster_yaml.is_file():
        return None
    try:
        loaded = yaml.safe_load(dagster_yaml.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise PostgresConfigError(f"{dagster_yaml} 不是有效的 YAML：{error}") from error
    return postgres_storage(loaded) if isinstance(loaded, Mapping) else None


def pg_env_set(env: Mapping[str, str]) -> bool:
    return any(name in env for name in PG_ENV.values())


def _value(field: str, raw: Any, env: Mapping[str, str]) -> tuple[str, str]:
    """(value, origin) of one field: the environment variable the file names, or a literal."""
    if isinstance(raw, Mapping) and "env" in raw:
        name = str(raw["env"])
        if name not in env:
            raise PostgresConfigError(
                f"环境变量 {name} 未设置：Dagster 实例的 Postgres {field} 从它读取"
                f"（export {name}=…）"
            )
        return env[name], name
    return ("" if raw is None else str(raw)), f"dagster.yaml 的 {field}"


def resolve_target(storage: Mapping[str, Any], env: Mapping[str, str]) -> PgTarget:
    """The connection the instance would open, or PostgresConfigError saying what is missing."""
    if "postgres_url" in storage:
        url, origin = _value("postgres_url", storage["postgres_url"], env)
        parts = urlsplit(url)
        return PgTarget(
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=parts.port or DEFAULT_PORT,
            user=unquote(parts.username or ""),
            password=SecretStr(unquote(parts.password or "")),
            db=parts.path.lstrip("/"),
            origin=dict.fromkeys(PG_ENV, origin),
        )
    block = storage.get("postgres_db")
    if not isinstance(block, Mapping):
        raise PostgresConfigError(
            "dagster.yaml 的 Postgres 存储既没有 postgres_db 也没有 postgres_url"
        )
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for field in PG_ENV:
        if field in block:
            values[field], origin[field] = _value(field, block[field], env)
        else:
            values[field], origin[field] = "", f"dagster.yaml 的 {field}"
    try:
        port = int(values["port"] or DEFAULT_PORT)
    except ValueError as error:
        raise PostgresConfigError(
            f"Postgres 端口 {values['port']!r} 不是数字：检查 {origin['port']}"
        ) from error
    scheme, _ = _value("scheme", block.get("scheme", "postgresql"), env)
    return PgTarget(
        scheme=scheme,
        host=values["hostname"],
        port=port,
        user=values["username"],
        password=SecretStr(values["password"]),
        db=values["db_name"],
        origin=origin,
    )


def _unreachable(target: PgTarget, reason: str) -> PgCheck:
    where = f"{target.origin['hostname']} / {target.origin['port']}"
    return PgCheck(
        ok=False,
        problem="unreachable",
        detail=f"无法连接 Postgres 服务器 {target.host}:{target.port}（{reason}）："
        f"确认服务在运行，或用 {where} 指向它",
    )


def _tcp_reason(target: PgTarget, timeout_s: float) -> str | None:
    """Why a TCP connection to the server fails, or None when it opens. Checked before
    logging in so a closed port is never reported as a login failure."""
    if target.host.startswith("/"):
        return None  # a Unix-socket directory: libpq reports it itself
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout_s):
            return None
    except socket.gaierror:
        return "主机名无法解析"
    except ConnectionRefusedError:
        return "连接被拒绝，端口上没有服务"
    except TimeoutError:
        return f"{timeout_s:g} 秒内无响应"
    except OSError as error:
        return error.strerror or type(error).__name__


def _classify(message: str) -> Problem | None:
    """libpq's English messages (a server in the C or an English locale); None = unknown."""
    text = message.lower()
    if "password authentication failed" in text or "no password supplied" in text:
        return "auth"
    if "role" in text and "does not exist" in text:
        return "auth"
    if "database" in text and "does not exist" in text:
        return "database"
    if "could not connect" in text or "connection refused" in text or "timeout" in text:
        return "unreachable"
    return None


def _driver_problem(scheme: str) -> str | None:
    """Why SQLAlchemy cannot load the driver `scheme` names, or None when it can: the check
    Dagster itself would fail on when it opens the instance."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(f"{scheme}://").get_dialect()
    except (ArgumentError, NoSuchModuleError):
        return f"dagster.yaml 的 Postgres scheme {scheme!r} 不是 SQLAlchemy 认识的驱动"
    try:
        dialect.import_dbapi()
    except ImportError:
        if scheme == PSYCOPG2_SCHEME:
            return (
                "实例用 Postgres 存储，但没有安装 dagster-postgres：pip install -e '.[scale-out]'"
            )
        return (
            f"Postgres scheme {scheme!r} 要的驱动 {dialect.driver} 没有安装："
            f"在 dagster.yaml 的 postgres_db 下写 scheme: {PSYCOPG2_SCHEME}"
            "（deploy/dagster-postgres.yaml 已写）"
        )
    return None


def check_postgres(target: PgTarget, timeout_s: float = CONNECT_TIMEOUT_S) -> PgCheck:
    """Connect as the instance would and say in one sentence what is wrong, if anything."""
    problem = _driver_problem(target.scheme)
    if problem is None and target.scheme != PSYCOPG2_SCHEME:
        problem = _driver_problem(PSYCOPG2_SCHEME)  # this check itself connects with psycopg2
    if problem is not None:
        return PgCheck(ok=False, problem="driver", detail=problem)
    import psycopg2  # installed with dagster-postgres (the scale-out extra)

    reason = _tcp_reason(target, timeout_s)
    if reason is not None:
        return _unreachable(target, reason)

    def connect(db: str) -> Any:
        return psycopg2.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password.get_secret_value(),
            dbname=db,
            connect_timeout=max(1, round(timeout_s)),
        )

    try:
        connection = connect(target.db)
    except psycopg2.OperationalError as error:
        message = str(error).strip()
        problem = _classify(message)
        if problem is None:
            # A server in another locale words its errors differently: if the same login
            # works on the maintenance database, the configured database is what is missing.
            try:
                connect("postgres").close()
                problem = "database"
            except psycopg2.OperationalError:
                problem = "other"
        return _failure(target, problem, message)
    try:
        version = connection.server_version  # e.g. 150018
    finally:
        connection.close()
    return PgCheck(
        ok=True,
        problem=None,
        detail=f"已连接 {target.user}@{target.host}:{target.port}/{target.db}"
        f"（PostgreSQL {version // 10000}.{version % 10000}）",
    )


def _failure(target: PgTarget, problem: Problem, message: str) -> PgCheck:
    if problem == "unreachable":
        return _unreachable(target, message.splitlines()[-1].strip())
    if problem == "auth":
        detail = (
            f"Postgres 拒绝了用户 {target.user} 的登录（密码错误或用户不存在）："
            f"检查 {target.origin['username']} 和 {target.origin['password']}"
        )
    elif problem == "database":
        detail = (
            f"Postgres 上没有数据库 {target.db}：先创建它"
            f"（createdb -h {target.host} -p {target.port} -U {target.user} {target.db}），"
            f"或改 {target.origin['db_name']}"
        )
    else:
        first = next((line for line in message.splitlines() if line.strip()), message)
        detail = f"Postgres 连接失败：{first.strip()}"
    return PgCheck(ok=False, problem=problem, detail=detail)


def check_instance_postgres(
    dagster_yaml: Path, env: Mapping[str, str] | None = None
) -> tuple[bool, PgCheck] | None:
    """(the instance uses Postgres, the check) for doctor; None when neither the instance's
    dagster.yaml uses Postgres nor any DAGSTER_PG_* variable is set (the SQLite default).
    With only the variables set, the shipped file's settings are checked."""
    env = os.environ if env is None else env
    try:
        storage = read_instance_storage(dagster_yaml)
    except PostgresConfigError as error:
        return True, PgCheck(ok=False, problem="config", detail=str(error))
    if storage is None and not pg_env_set(env):
        return None
    uses_postgres = storage is not None
    try:
        target = resolve_target(storage or {"postgres_db": DEPLOY_POSTGRES_DB}, env)
    except PostgresConfigError as error:
        return uses_postgres, PgCheck(ok=False, problem="config", detail=str(error))
    return uses_postgres, check_postgres(target)
