"""Real PostgreSQL and Redis servers for the scale-out tests and the bench's workers row:
started in temp folders on free loopback ports, stopped and removed after. No containers.

PostgreSQL refuses to run as root (`initdb: cannot be run as root`). Where the tests run as
root (this image, CI containers) the server runs as an unprivileged account through
`runuser -u <account> --` (util-linux): `postgres` when the server package made it, else
`nobody`. Its folder comes from `tempfile.mkdtemp` and is handed to that account: pytest's own
temp tree is root-only (mode 700) and the account could not enter it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from profiling_assets.commands.instance_postgres import PG_ENV

REPO = Path(__file__).resolve().parents[2]
POSTGRES_YAML = REPO / "deploy" / "dagster-postgres.yaml"
DATABASE = "dagster"
ROLE = "dagster"
START_TIMEOUT_S = 60
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")  # Debian's server binaries: <version>/bin/


class MissingService(RuntimeError):
    """A server binary or client library is not installed; the message says what to install."""


class PostgresServer(BaseModel):
    """A running server and one database on it, as the instance's settings name them."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    user: str
    password: str
    db: str

    @property
    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables `deploy/dagster-postgres.yaml` reads."""
        values = {
            "username": self.user,
            "password": self.password,
            "hostname": self.host,
            "db_name": self.db,
            "port": str(self.port),
        }
        return {PG_ENV[field]: value for field, value in values.items()}

    def with_db(self, db: str) -> PostgresServer:
        return self.model_copy(update={"db": db})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_binaries(debian_root: Path = DEBIAN_POSTGRES) -> tuple[str, str]:
    """initdb and pg_ctl: on PATH, else Debian's versioned folder (not on PATH by default)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    folders = sorted(
        debian_root.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(folders):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return str(folder / "initdb"), str(folder / "pg_ctl")
    raise MissingService(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql"
    )


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root; None = run as ourselves."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise MissingService(
            "running as root, and PostgreSQL must not: install util-linux (runuser) "
            "or run the tests as another user"
        )
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise MissingService("running as root with no unprivileged account (postgres or nobody)")


def _run(command: list[str], account: pwd.struct_passwd | None, cwd: Path) -> None:
    """Run a server command, as `account` when we are root. `cwd` is the server's own folder:
    the account cannot enter root's working directory."""
    if account is not None:
        command = ["runuser", "-u", account.pw_name, "--", *command]
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def create_database(server: PostgresServer, name: str) -> PostgresServer:
    """A new empty database on the server (one per test keeps instances apart)."""
    import psycopg2
    from psycopg2 import sql

    connection = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
    )
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()
    return server.with_db(name)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb in a temp folder, pg_ctl start on a free loopback port, one database; stopped
    and removed on exit."""
    initdb, pg_ctl = postgres_binaries()
    try:
        import psycopg2  # noqa: F401  (create_database needs it; say so before starting)
    except ImportError as error:
        raise MissingService(f"psycopg2 missing ({error}): pip install -e '.[test]'") from error
    account = _server_account()
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    data, log = root / "data", root / "server.log"
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    log.touch()
    if account is not None:
        for path in (root, pwfile, log):
            os.chown(path, account.pw_uid, account.pw_gid)
    port = free_port()
    started = False
    try:
        _start_postgres(initdb, pg_ctl, root, port, account)
        started = True
        server = PostgresServer(host="127.0.0.1", port=port, user=ROLE, password=password, db="")
        database = create_database(server, DATABASE)
    except Exception as error:
        server_log = log.read_text(errors="replace")
        if started:
            _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], account, root)
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not come up: {error}\nlog:\n{server_log}") from error
    try:
        yield database
    finally:
        _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], account, root)
        shutil.rmtree(root, ignore_errors=True)


def _start_postgres(
    initdb: str, pg_ctl: str, root: Path, port: int, account: pwd.struct_passwd | None
) -> None:
    data = root / "data"
    # scram on every connection, so a wrong password really fails; C locale, so the server's
    # messages are the English ones doctor recognises.
    setup = ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]
    _run(
        [initdb, "-D", str(data), "-U", ROLE, f"--pwfile={root / 'pwfile'}", *setup],
        account,
        root,
    )
    # fsync off: a throwaway server in a temp folder. Its socket stays in that folder too.
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    wait = ["-w", "-t", str(START_TIMEOUT_S)]
    _run(
        [pg_ctl, "-D", str(data), "-l", str(root / "server.log"), *wait, "-o", options, "start"],
        account,
        root,
    )


@contextmanager
def running_redis() -> Iterator[str]:
    """redis-server on a free loopback port, nothing persisted; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingService("redis-server not found: apt-get install -y redis-server")
    try:
        import redis  # noqa: F401  (the wait below needs it; say so before starting)
    except ImportError as error:
        raise MissingService(f"redis-py missing ({error}): pip install -e '.[test]'") from error
    root = Path(tempfile.mkdtemp(prefix="redis-test-"))
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(root)]
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(url, server, root / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_redis(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"redis-server exited {server.returncode}:\n{log.read_text()}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S} s")


def postgres_home(folder: Path, server: PostgresServer) -> tuple[Path, dict[str, str]]:
    """A DAGSTER_HOME holding the shipped `deploy/dagster-postgres.yaml`, and the environment
    that points it at `server` (the file itself holds no connection setting)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(POSTGRES_YAML, folder / "dagster.yaml")
    return folder, {**server.env, "DAGSTER_HOME": str(folder)}
