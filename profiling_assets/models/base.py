"""The small protocols every model backend implements, and the identity each one carries."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
    """One LLM answer with the timings the seed's monitoring asks for."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    load_s: float = 0.0
    eval_s: float = 0.0
    finish_reason: str = ""


@runtime_checkable
class ProfileLLM(Protocol):
    identity: ModelIdentity

    def generate(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> LLMReply:
        """Answer constrained to the JSON schema; raises `LLMError` on transport failure."""
        ...


def uses_compact_schema(llm: ProfileLLM) -> bool:
    """Whether a backend asks for the narrative-only `CompactProfile` instead of the full
    `UserProfile`: an optional class attribute `compact_schema`, set by backends whose
    model is too small to fill every field (xllamacpp's 270M). Servers default to full."""
    return bool(getattr(llm, "compact_schema", False))


class ModelError(RuntimeError):
    """A model backend failed (unreachable, timeout, bad answer); the message says why."""
