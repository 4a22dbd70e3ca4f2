"""Profile LLM on any OpenAI-compatible server (vLLM, llama.cpp server) with a strict
`json_schema` response format, temperature 0."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import httpx
import openai
from pydantic import SecretStr

from profiling_assets.models.base import DECLINED_STATUSES, LLMReply, ModelError, ModelIdentity
from profiling_assets.models.endpoint_pool import DEFAULT_COOLDOWN_S, EndpointPool
from profiling_assets.models.endpoints import METADATA_TIMEOUT, parse_endpoints, shown
from profiling_assets.models.pool_identity import AskedOnce, ask_each
from profiling_assets.models.pooled_llm import ChatRequest, PooledLLM
from profiling_assets.models.small_schema import tighten_for_small_model


class ServedModel(NamedTuple):
    """What an OpenAI-compatible server says of a model; 0 = it did not say."""

    n_params: int = 0
    n_ctx: int = 0
    size: int = 0  # bytes of the weights (llama.cpp's `meta.size`): tells quantisations apart
    answered: bool = False


def openai_llm_identity(model: str, base_url: str) -> ModelIdentity:
    # The server is not asked: most OpenAI-compatible servers expose no weights digest. The
    # same for one server or several: `served_model_of` checks that several serve one model.
    return ModelIdentity(backend="openai", model=model, note=base_url)


def served_model(base_url: str, model: str, api_key: SecretStr) -> ServedModel:
    """`GET /v1/models`: llama.cpp reports `meta.n_params` and `meta.n_ctx` (per slot), vLLM
    `max_model_len`. The entry named `model`, else the only one; nothing on any error (a
    server that is down must not fail a definitions load)."""
    key = api_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.get(
            f"{base_url.rstrip('/')}/models", headers=headers, timeout=METADATA_TIMEOUT
        )
        reply.raise_for_status()
        listed = reply.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return ServedModel()
    entries = [e for e in listed if isinstance(e, dict)]
    named = [e for e in entries if model in (e.get("id"), *(e.get("aliases") or []))]
    entry = named[0] if named else entries[0] if len(entries) == 1 else {}
    meta = entry.get("meta") or {}
    n_ctx = meta.get("n_ctx") or entry.get("max_model_len") or 0
    return ServedModel(
        int(meta.get("n_params") or 0), int(n_ctx), int(meta.get("size") or 0), answered=True
    )


def served_model_of(base_url: str, model: str, api_key: SecretStr) -> ServedModel:
    """`served_model` of a setting that may list several servers, all asked at once: the
    parameters of the first that answers (in the order listed), the smallest context of
    those that say (a request grown to fit must fit wherever it goes). Servers that report
    their weights (llama.cpp: parameters and bytes) must report the same ones, else
    `ModelError`; vLLM reports neither, so several vLLM servers are taken at their word."""
    urls = parse_endpoints(base_url, bare_host_ok=True)
    served = ask_each(urls, lambda url: served_model(url, model, api_key))
    answered = [(url, s) for url, s in zip(urls, served, strict=True) if s.answered]
    if not answered:
        return ServedModel()
    weighed = [(url, s) for url, s in answered if s.n_params]
    if len({(s.n_params, s.size) for _, s in weighed}) > 1:
        listed = "; ".join(
            f"{shown(url)}: {s.n_params} parameters, {s.size} bytes" for url, s in weighed
        )
        raise ModelError(
            f"the endpoints serve different models as {model!r} ({listed}): list only servers "
            "of one model in PROFILING_OPENAI_BASE_URL"
        )
    contexts = [s.n_ctx for _, s in answered if s.n_ctx]
    return answered[0][1]._replace(n_ctx=min(contexts, default=0))


class OpenAICompatLLM(PooledLLM):
    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: SecretStr,
        *,
        max_tokens: int = 700,
        timeout_s: float = 180.0,
        compact_schema: bool = False,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        self.identity = openai_llm_identity(model, base_url)
        self.model = model
        self.base_url = base_url
        self.max_tokens = max_tokens
        # Decided from PROFILING_LLM_SCHEMA (`registry.llm_schema`); a compact request also
        # gets the small-model tightening (numbers on a grid, no escapes), which any JSON
        # schema engine reads as plain `enum` / `pattern`.
        self.compact_schema = compact_schema
        self._api_key = api_key
        self._context = AskedOnce(
            lambda: served_model_of(self.base_url, self.model, self._api_key).n_ctx
        )
        # Local servers accept any key; the client insists on a non-empty one. The key is
        # read here only and never logged or put into the identity.
        self._key = api_key.get_secret_value()
        # One client per server (`base_url` may list several), behind a pool that sends each
        # request to the least busy one and sets aside one that fails.
        urls = parse_endpoints(base_url, bare_host_ok=True)
        self._clients = {
            url: openai.OpenAI(
                base_url=url,
                api_key=self._key or "not-needed",
                timeout=timeout_s,
                max_retries=0,  # retries are the pool's (other servers) and the caller's
            )
            for url in urls
        }
        self.pool = EndpointPool(urls, cooldown_s=cooldown_s)

    @property
    def context_tokens(self) -> int:
        """Tokens one request may hold (prompt + answer), as the server reports it; 0 when it
        does not say. Asked once, when a truncated answer needs more room."""
        return self._context.get()

    def _schema_for_server(self, schema: dict[str, Any]) -> dict[str, Any]:
        return tighten_for_small_model(schema) if self.compact_schema else schema

    def _generate_at(self, url: str, request: ChatRequest) -> LLMReply:
        started = time.perf_counter()
        try:
            response = self._clients[url].chat.completions.create(
                model=self.model,
                messages=request.messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=request.max_tokens or self.max_tokens,
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "UserProfile",
                        "schema": request.schema,
                        "strict": True,
                    },
                },
            )
        except openai.OpenAIError as exc:
            # Some servers echo the key they refused, and the reason is logged and stored: cut
            # the key out, and do not chain the original error (its text holds the key).
            reason = str(exc).replace(self._key, "***") if self._key else str(exc)
            status = getattr(exc, "status_code", None)
            kind = "refused" if status in DECLINED_STATUSES else "transport"
            raise ModelError(f"openai-compatible chat {self.model}: {reason}", kind=kind) from None
        latency = time.perf_counter() - started
        if not response.choices:
            raise ModelError(f"openai-compatible chat {self.model}: no choices in the answer")
        choice = response.choices[0]
        usage = response.usage
        # llama.cpp adds its own `timings` (not in the OpenAI API): decode time, for tokens/s.
        timings = (response.model_extra or {}).get("timings") or {}
        return LLMReply(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            cached_tokens=_cached_tokens(usage, timings),
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=latency,
            eval_s=float(timings.get("predicted_ms") or 0.0) / 1000.0,
            finish_reason=choice.finish_reason or "",
            refusal=getattr(choice.message, "refusal", None) or "",
        )


def _cached_tokens(usage: Any, timings: dict[str, Any]) -> int:
    """Prompt tokens the server reused from its prefix cache: OpenAI's (and vLLM's)
    `prompt_tokens_details.cached_tokens`, else llama.cpp's `timings.cache_n`; 0 when the
    server says neither."""
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    cached = getattr(details, "cached_tokens", None) if details else None
    return int(cached if cached is not None else timings.get("cache_n") or 0)
