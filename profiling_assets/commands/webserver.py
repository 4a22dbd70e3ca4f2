"""Dagster's public GraphQL API: a small client, and a webserver of our own when none runs.

The webserver computes staleness exactly as the UI shows it and launches backfills the way
the UI does, so the CLI needs no private Dagster module. It reads the same instance
(`DAGSTER_HOME`) and loads the code location with the same environment as this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CODE_LOCATION_MODULE = "profiling_assets.definitions"
# Loading the definitions imports the model stack (torch, transformers): give it time.
STARTUP_TIMEOUT_S = 180.0
_POLL_S = 0.5

_LOCATION_STATUS = """
query LocationStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


class GraphQLError(RuntimeError):
    """The webserver answered with errors, or could not be reached."""


class DagsterGraphQL:
    """POSTs queries to `<url>/graphql`; raises `GraphQLError` on any error the server sends."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = httpx.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables or {}},
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as exc:
            raise GraphQLError(f"Dagster webserver {self.url} unreachable: {exc}") from exc
        body = response.json() if response.content else {}
        if response.status_code != 200 or body.get("errors"):
            messages = "; ".join(e.get("message", "") for e in body.get("errors", []))
            raise GraphQLError(f"GraphQL {response.status_code}: {messages or response.text}")
        return body["data"]

    def ready(self) -> bool:
        """True once the webserver answers and every code location has loaded."""
        try:
            data = self.execute(_LOCATION_STATUS)
        except GraphQLError:
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise GraphQLError(f"code location {entry['name']} failed: {error['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webserver_command(port: int) -> list[str]:
    """The webserver of this virtual environment, serving our one code location."""
    binary = Path(sys.executable).with_name("dagster-webserver")
    return [str(binary), "-h", "127.0.0.1", "-p", str(port), "-m", CODE_LOCATION_MODULE]


@contextmanager
def running_webserver(dagster_home: Path, log_file: Path) -> Iterator[DagsterGraphQL]:
    """Start `dagster-webserver` on a free port for the duration of one command, then stop
    it; its output goes to `log_file` so the terminal shows only our own lines."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home.resolve())}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            webserver_command(port), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        client = DagsterGraphQL(f"http://127.0.0.1:{port}")
        _wait_until_ready(client, process, log_file)
        yield client
    finally:
        _stop(process)


def _wait_until_ready(
    client: DagsterGraphQL, process: subprocess.Popen[bytes], log_file: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise GraphQLError(f"dagster-webserver exited with {code}; see {log_file}")
        if client.ready():
            return
        time.sleep(_POLL_S)
    waited = f"{STARTUP_TIMEOUT_S:.0f} s"
    raise GraphQLError(f"dagster-webserver not ready after {waited}; see {log_file}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the webserver stop its code server; kill only if it does not exit."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
