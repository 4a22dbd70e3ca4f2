"""llama.cpp's own HTTP server (xllamacpp) on 127.0.0.1, serving the shipped gemma-3-270m GGUF:
the OpenAI-compatible `/v1/chat/completions`, `/v1/models`, `/props` and `/metrics`, for
tests of the `openai` backend against a real server (no fake answers).

The server runs in a child process: `stop()` kills it the way a crash or an OOM kill would,
answers in flight included (an in-process `xllamacpp.Server` only shuts down once its
requests are done), and `start()` brings it back on the same port. Also runnable on its own,
for measuring by hand:

    .venv/bin/python -m profiling_assets_tests.llama_server --port 8080 --parallel 2
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from profiling_assets.models.llm_xllamacpp import ensure_model_file, server_params

STARTUP_TIMEOUT_S = 120.0
_METRIC_LINE = re.compile(r"^(llamacpp:[a-z_]+)\s+([0-9.eE+-]+)$")
_REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LlamaServer:
    """`with LlamaServer(models_dir) as server:`; `server.openai_url` is the base URL to pass
    as `PROFILING_OPENAI_BASE_URL`."""

    def __init__(
        self,
        models_dir: Path,
        *,
        parallel: int = 2,
        ctx_per_slot: int = 4096,
        port: int | None = None,
        threads: int | None = None,
    ) -> None:
        # Assembled here, once, so a restart only loads the model.
        self.model_path = ensure_model_file(models_dir)
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.port = port or free_port()
        self.load_s = 0.0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> LlamaServer:
        command = [
            sys.executable,
            "-m",
            "profiling_assets_tests.llama_server",
            "--model",
            str(self.model_path),
            "--port",
            str(self.port),
            "--parallel",
            str(self.parallel),
            "--ctx-per-slot",
            str(self.ctx_per_slot),
        ]
        if self.threads:
            command += ["--threads", str(self.threads)]
        env = {**os.environ, "PYTHONPATH": str(_REPO)}
        started = time.perf_counter()
        self._process = subprocess.Popen(
            command, cwd=_REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama.cpp server on {self.url} did not come up")
            time.sleep(0.1)
        self.load_s = time.perf_counter() - started
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Kill the server, answers in flight included: connections are refused until
        `start()` again."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

    def metrics(self) -> dict[str, float]:
        """The Prometheus figures of `/metrics` (`llamacpp:…` name → value)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5.0).text
        found = (_METRIC_LINE.match(line) for line in text.splitlines())
        return {m.group(1): float(m.group(2)) for m in found if m}

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(model: Path, port: int, parallel: int, ctx_per_slot: int, threads: int | None) -> None:
    """The server itself (the child process): load, listen, wait to be killed."""
    import xllamacpp

    params = server_params(
        model,
        ctx_per_slot=ctx_per_slot,
        parallel=parallel,
        threads=threads,
        port=port,
        metrics=True,
    )
    server = xllamacpp.Server(params)
    print(f"serving {model.name} at http://127.0.0.1:{port}/v1 ({parallel} slots)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        del server


def main() -> None:
    parser = argparse.ArgumentParser(description="gemma-3-270m behind llama.cpp's HTTP server")
    parser.add_argument("--model", help="GGUF file (default: the shipped gemma, assembled)")
    parser.add_argument("--models-dir", default="data/models")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    model = Path(args.model) if args.model else ensure_model_file(Path(args.models_dir))
    serve(model, args.port, args.parallel, args.ctx_per_slot, args.threads)


if __name__ == "__main__":
    main()
