"""Offline reranker: no cross-encoder ships in a package, so the embedder scores the pairs."""

from __future__ import annotations

import hashlib
import re
import threading

import numpy as np

from profiling_assets.models.base import Embedder, ModelIdentity

# Bump when the scoring recipe changes: it is part of the identity, hence of code_version.
SCORING_VERSION = "maxsim1"
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.、)]|[（(]\d+[)）])\s*")


def passage_lines(passage: str) -> list[str]:
    """Non-empty lines with list markers dropped; just the passage when it has one line."""
    lines = [_BULLET.sub("", line).strip() for line in passage.splitlines()]
    lines = [line for line in lines if line]
    # One line: its vector is the passage's own, so reuse that instead of embedding again.
    return lines if len(lines) > 1 else [passage]


def maxsim_identity(embedder: ModelIdentity) -> ModelIdentity:
    return ModelIdentity(
        backend="embedder-maxsim",
        model=embedder.model,
        version=f"{embedder.backend}-{embedder.version}-{SCORING_VERSION}",
        dim=0,
        note="not a cross-encoder: 0.5*passage cosine + 0.5*best line cosine, bi-encoder vectors",
    )


def _key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbedderReranker:
    """`Reranker` that adds line-level max-sim to whole-passage cosine.

    A chunk often holds one relevant line among several unrelated ones; its whole-passage
    vector dilutes that line, the best single line does not. Line vectors are cached by text
    hash because the same chunks come back for every question asked about a user.
    """

    def __init__(self, embedder: Embedder, max_cache: int = 100_000) -> None:
        self.embedder = embedder
        self.identity = maxsim_identity(embedder.identity)
        self.max_cache = max_cache
        self.texts_embedded = 0
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _vectors(self, texts: list[str]) -> list[np.ndarray]:
        """Passage vectors for `texts`, embedding only those not cached, in one batch."""
        keys = [_key(text) for text in texts]
        with self._lock:
            found = {key: self._cache[key] for key in keys if key in self._cache}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            fresh = self.embedder.embed_passages(list(missing.values()))
            found.update(zip(missing, fresh, strict=True))
            with self._lock:
                self.texts_embedded += len(missing)
                if len(self._cache) + len(missing) > self.max_cache:
                    self._cache.clear()  # crude but bounded; one run rarely gets here
                self._cache.update(zip(missing, fresh, strict=True))
        return [found[key] for key in keys]

    def score(self, query: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        query_vec = self.embedder.embed_queries([query])[0]
        lines = [passage_lines(passage) for passage in passages]
        flat = list(passages) + [line for group in lines for line in group]
        vectors = self._vectors(flat)
        whole = np.stack(vectors[: len(passages)]) @ query_vec
        scores: list[float] = []
        offset = len(passages)
        for index, group in enumerate(lines):
            line_sims = np.stack(vectors[offset : offset + len(group)]) @ query_vec
            offset += len(group)
            scores.append(float(0.5 * whole[index] + 0.5 * line_sims.max()))
        return scores
