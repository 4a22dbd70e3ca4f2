"""Profile LLM on an Ollama server: `chat` with the JSON schema as `format`, temperature 0,
reasoning off (`think=False`: a profile is an extraction, and thinking tokens would only cost
time and answer room), and a bounded `keep_alive` (never -1, which pins the model forever)."""

from __future__ import annotations

import re
import time

import httpx
import ollama

from profiling_assets.models.base import DECLINED_STATUSES, LLMReply, ModelError, ModelIdentity
from profiling_assets.models.endpoint_pool import DEFAULT_COOLDOWN_S
from profiling_assets.models.endpoints import METADATA_TIMEOUT, parse_endpoints, shown
from profiling_assets.models.ollama_client import full_tag, pooled_clients
from profiling_assets.models.pool_identity import AskedOnce, agreed_identity
from profiling_assets.models.pooled_llm import ChatRequest, PooledLLM

DEFAULT_OLLAMA_LLM = "qwen2.5:7b-instruct-q4_K_M"
# num_ctx rounds up to this step; room for the chat template and estimate drift on top of the
# prompt budget and the answer.
_CTX_STEP = 1024
_CTX_MARGIN_TOKENS = 256
_PARAMETER_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBT])\s*$", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def default_num_ctx(prompt_token_budget: int, max_tokens: int) -> int:
    """One context size for every request of a run, from the budgets rather than each prompt:
    Ollama reloads the model whenever `num_ctx` changes, so it must not step with prompt size."""
    need = prompt_token_budget + max_tokens + _CTX_MARGIN_TOKENS
    return -(-need // _CTX_STEP) * _CTX_STEP


def parameter_count(size: str | None) -> int:
    """Ollama's `parameter_size` ("7.6B", "270M") as a number; 0 when absent or unreadable."""
    found = _PARAMETER_SIZE.match(size or "")
    return int(float(found.group(1)) * _SCALE[found.group(2).upper()]) if found else 0


def ollama_llm_identity(model: str, host: str) -> ModelIdentity:
    """Digest from `/api/tags` when a server answers; the tag alone otherwise (noted).
    `host` may list several servers (`PROFILING_OLLAMA_HOST`): they must agree."""
    return agreed_identity(
        parse_endpoints(host, bare_host_ok=True), lambda one: _server_identity(model, one)
    )


def _server_identity(model: str, host: str) -> ModelIdentity:
    try:
        listed = ollama.Client(host=host, timeout=METADATA_TIMEOUT).list()
    except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
        # ValueError: a 200 whose body is not JSON. Identity must not fail a definitions load;
        # the chat call fails loudly (and is recorded per user) instead.
        return ModelIdentity(backend="ollama", model=model, note=f"unreachable: {exc}"[:200])
    for entry in listed.models:
        if entry.model == full_tag(model):
            size = entry.details.parameter_size if entry.details else None
            return ModelIdentity(
                backend="ollama",
                model=model,
                version=entry.digest or "",
                n_params=parameter_count(size),
            )
    return ModelIdentity(backend="ollama", model=model, note="not pulled on the server")


class OllamaLLM(PooledLLM):
    def __init__(
        self,
        model: str = DEFAULT_OLLAMA_LLM,
        host: str = "http://127.0.0.1:11434",
        *,
        keep_alive: str = "10m",
        max_tokens: int = 700,
        timeout_s: float = 180.0,
        connect_timeout_s: float = 3.0,
        num_ctx: int = 0,
        prompt_token_budget: int = 1800,
        compact_schema: bool = False,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        if keep_alive.strip() in {"-1", "-1s", "-1m"}:
            # A model pinned forever keeps its memory from every other model on the server.
            raise ValueError("keep_alive -1 pins the model forever; use a duration like 10m")
        self.model = model
        self.host = host
        self.keep_alive = keep_alive
        self.max_tokens = max_tokens
        # Fixed for the whole run (see `default_num_ctx`); a truncated answer may grow into it.
        self.context_tokens = num_ctx or default_num_ctx(prompt_token_budget, max_tokens)
        # Decided from PROFILING_LLM_SCHEMA (`registry.llm_schema`).
        self.compact_schema = compact_schema
        # One client per server (`host` may list several), behind a pool that sends each
        # request to the least busy one and sets aside one that fails.
        self._clients, self.pool = pooled_clients(
            host, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, cooldown_s=cooldown_s
        )
        self._identity = AskedOnce(lambda: ollama_llm_identity(self.model, self.host))

    @property
    def identity(self) -> ModelIdentity:
        return self._identity.get()

    def _generate_at(self, host: str, request: ChatRequest) -> LLMReply:
        started = time.perf_counter()
        try:
            response = self._clients[host].chat(
                model=self.model,
                messages=request.messages,
                format=request.schema,
                think=False,
                keep_alive=self.keep_alive,
                options={
                    "temperature": 0,
                    "num_ctx": self.context_tokens,
                    "num_predict": request.max_tokens or self.max_tokens,
                },
                stream=False,
            )
        except ollama.ResponseError as exc:
            kind = "refused" if exc.status_code in DECLINED_STATUSES else "transport"
            raise ModelError(
                f"ollama chat {self.model}: HTTP {exc.status_code}: {exc.error}", kind=kind
            ) from exc
        except (httpx.HTTPError, ConnectionError, ValueError) as exc:
            # ValueError: a 200 whose body is not JSON (a proxy page, a broken server).
            raise ModelError(f"ollama chat {self.model} at {shown(host)}: {exc!r}") from exc
        latency = time.perf_counter() - started
        ns = 1e-9
        return LLMReply(
            text=response.message.content or "",
            prompt_tokens=response.prompt_eval_count or 0,
            completion_tokens=response.eval_count or 0,
            latency_s=latency,
            load_s=(response.load_duration or 0) * ns,
            eval_s=(response.eval_duration or 0) * ns,
            finish_reason=response.done_reason or "",
        )
