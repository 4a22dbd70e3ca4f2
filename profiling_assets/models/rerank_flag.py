"""Cross-encoder reranking (bge-reranker-v2-m3) through FlagEmbedding's `FlagReranker`."""

from __future__ import annotations

from typing import Any

import numpy as np

from profiling_assets.models.base import ModelError, ModelIdentity
from profiling_assets.models.embed_flag import LazyFlagModel, flag_model_facts, flag_version

DEFAULT_FLAG_RERANKER = "BAAI/bge-reranker-v2-m3"


def flag_reranker_identity(name: str = DEFAULT_FLAG_RERANKER) -> ModelIdentity:
    revision, _ = flag_model_facts(name)
    return ModelIdentity(
        backend="flagembedding",
        model=name,
        version=flag_version(revision),
        dim=0,
        note="cross-encoder; sigmoid-normalised scores in [0, 1]",
    )


class FlagCrossReranker(LazyFlagModel):
    """`Reranker` over `FlagReranker`; loads on first use and records `load_s`."""

    default_model = DEFAULT_FLAG_RERANKER
    identity_of = staticmethod(flag_reranker_identity)

    def _build(self, device: str) -> Any:
        from FlagEmbedding import FlagReranker

        return FlagReranker(
            self.model_name, **self._device_options(device), max_length=self.max_length
        )

    def score(self, query: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        pairs = [(query, passage) for passage in passages]
        scores = self._loaded().compute_score(pairs, normalize=True, batch_size=self.batch_size)
        # Older FlagEmbedding releases return a bare float for a single pair.
        flat = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        if flat.shape != (len(passages),):
            raise ModelError(f"reranker gave {flat.shape} scores for {len(passages)} passages")
        return [float(value) for value in flat]
