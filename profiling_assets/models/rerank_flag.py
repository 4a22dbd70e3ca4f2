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

    def __init__(
        self,
        model: str = DEFAULT_FLAG_RERANKER,
        batch_size: int = 32,
        max_length: int = 512,
        device: str | None = None,
    ) -> None:
        super().__init__(flag_reranker_identity(model), model, batch_size, max_length, device)

    def _loaded(self) -> Any:
        if self._model is None:
            from FlagEmbedding import FlagReranker

            self._model = self._load(
                lambda device: FlagReranker(
                    self.model_name,
                    use_fp16=device.startswith("cuda"),
                    devices=device,
                    batch_size=self.batch_size,
                    max_length=self.max_length,
                )
            )
        return self._model

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
