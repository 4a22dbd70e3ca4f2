"""The small protocols every model backend implements, and the identity each one carries."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ModelIdentity(BaseModel):
    """What a model *is*: feeds `code_version`, LanceDB table names and metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    model: str
    version: str = Field("", description="Package version, tag or digest.")
    dim: int = 0
    note: str = ""
    # Parameter count as the server reports it (0 = unknown). Not part of `str()`: it decides
    # the answer schema (`registry.llm_schema`), which `code_version` carries on its own.
    n_params: int = 0

    def __str__(self) -> str:
        parts = [self.backend, self.model, self.version or "-", str(self.dim)]
        return "|".join(parts)

    @property
    def slug(self) -> str:
        """Safe for a table or file name: letters, digits and underscores only."""
        raw = f"{self.backend}_{self.model}_{self.version}_{self.dim}".lower()
        return "".join(ch if ch.isalnum() else "_" for ch in raw).strip("_")[:120]


@runtime_checkable
class Embedder(Protocol):
    identity: ModelIdentity

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised float32 matrix, one row per text."""
        ...

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class Reranker(Protocol):
    identity: ModelIdentity

    def score(self, query: str, passages: list[str]) -> list[float]:
        """Higher is more relevant; one score per passage."""
        ...


class LLMReply(BaseModel):
    """One LLM answer with what monitoring needs: token counts, latency, load and decode
    time (tokens/s)."""

    text: str
    prompt_tokens: int = 0  # the whole prompt, cached part included
    # Of those, the tokens the server took from its prompt cache instead of evaluating them
    # (llama.cpp `cache_n`, OpenAI `prompt_tokens_details.cached_tokens`; 0 = none or unknown).
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    load_s: float = 0.0
    eval_s: float = 0.0
    finish_reason: str = ""
    refusal: str = ""  # the model declined to answer (OpenAI's `message.refusal`)


@runtime_checkable
class ProfileLLM(Protocol):
    identity: ModelIdentity

    def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int | None = None
    ) -> LLMReply:
        """Answer constrained to the JSON schema, at most `max_tokens` (default: the
        backend's own); raises `ModelError` on transport failure."""
        ...


def uses_compact_schema(llm: ProfileLLM) -> bool:
    """Whether a backend asks for the narrative-only `CompactProfile` instead of the full
    `UserProfile`: the `compact_schema` attribute each backend is built with from
    `PROFILING_LLM_SCHEMA` (`registry.llm_schema`). Absent means full."""
    return bool(getattr(llm, "compact_schema", False))


def answer_limits(llm: ProfileLLM) -> tuple[int, int]:
    """(max_tokens of a normal request, tokens one request's context holds; 0 = unknown),
    for growing the answer room of a truncated answer without leaving the context."""
    max_tokens = int(getattr(llm, "max_tokens", 0) or 0)
    return max_tokens, int(getattr(llm, "context_tokens", 0) or 0)


# Why a model call or answer failed. `transport`: no usable answer came back (unreachable,
# timeout, 5xx, auth, model not loaded); `refused`: the server or the model declined this
# request; `truncated`: the answer hit max_tokens; `bad_answer`: it failed the checks;
# `leak`: it repeated the system prompt.
FailureKind = Literal["transport", "bad_answer", "truncated", "refused", "leak"]
# Temperature-0 answers repeat: asking the same question of the same model again only repeats
# these. Transport and truncation depend on the server and on settings, so they are not.
SETTLING_KINDS: frozenset[str] = frozenset({"bad_answer", "refused", "leak"})
# HTTP statuses that decline this request (malformed, or too long) rather than say the server
# cannot serve at all (404 model not there, 5xx): the same request gets the same answer on
# every server, so it is `refused`, not `transport`, and nothing fails over.
DECLINED_STATUSES = frozenset({400, 422})


class ModelError(RuntimeError):
    """A model backend failed (unreachable, timeout, bad answer); the message says why,
    `kind` whether the request could not be served (`transport`) or was declined
    (`refused`)."""

    def __init__(self, message: str, *, kind: Literal["transport", "refused"] = "transport"):
        super().__init__(message)
        self.kind: Literal["transport", "refused"] = kind
