"""Cross-encoder reranking (bge-reranker-v2-m3) through FlagEmbedding's `FlagReranker`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from profiling_assets.models.base import ModelError, ModelIdentity
from profiling_assets.models.embed_flag import flag_model_facts, flag_version, torch_device

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


class FlagCrossReranker:
    """`Reranker` over `FlagReranker`; loads on first use and records `load_s`."""

    def __init__(
        self,
        model: str = DEFAULT_FLAG_RERANKER,
        batch_size: int = 32,
        max_length: int = 512,
        device: str | None = None,
    ) -> None:
        self.identity = flag_reranker_identity(model)
        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.load_s = 0.0
        self._model: Any = None

    def _loaded(self) -> Any:
        if self._model is not None:
            return self._model
        from FlagEmbedding import FlagReranker

        device = self.device or torch_device()
        started = time.perf_counter()
        try:
            self._model = FlagReranker(
                self.model_name,
                use_fp16=device.startswith("cuda"),
                devices=device,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )
        except (OSError, ValueError) as exc:  # not found, no network, not a model
            raise ModelError(f"cannot load {self.model_name!r} with FlagEmbedding: {exc}") from exc
        self.load_s = time.perf_counter() - started
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
