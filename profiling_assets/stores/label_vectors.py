"""The business spec's label vectors and their background baseline, kept on disk per embedder
identity (`data/cache/label_vectors/`), so a run in which no user changed never builds or
loads the embedder only to embed the same labels again."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from profiling_assets.core.label_scoring import (
    BACKGROUND_PASSAGES,
    MAX_BACKGROUND,
    LabelIndex,
    LabelLike,
    label_texts,
)
from profiling_assets.models.base import Embedder, ModelIdentity

LABEL_VECTORS_DIR = "label_vectors"


def label_vectors_path(
    cache_dir: Path, identity: ModelIdentity, labels: Sequence[LabelLike]
) -> Path:
    """One file per embedder identity and label set: a new model or a changed spec gets a new
    file, never a stale one."""
    payload = {
        "identity": str(identity),
        "labels": label_texts(labels),
        "background": list(BACKGROUND_PASSAGES),
        "max_background": MAX_BACKGROUND,
    }
    digest = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]
    return cache_dir / LABEL_VECTORS_DIR / f"{identity.slug}_{digest}.npz"


def cached_label_index(
    identity: ModelIdentity,
    labels: Sequence[LabelLike],
    cache_dir: Path,
    embedder: Callable[[], Embedder],
) -> LabelIndex:
    """The label index from the cache, or embedded (labels as queries, the fixed background
    passages as passages) and stored. `embedder` is called only on a miss."""
    path = label_vectors_path(cache_dir, identity, labels)
    try:
        with np.load(path) as stored:
            matrix, baseline = stored["matrix"], stored["baseline"]
        return LabelIndex.from_vectors(labels, matrix, baseline, embedder, str(identity))
    except (OSError, KeyError, ValueError):
        pass  # absent, or a partial file from a crash: embed again and rewrite it
    model = embedder()
    background = model.embed_passages(list(BACKGROUND_PASSAGES))
    index = LabelIndex(model, labels, background=background)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, matrix=index.matrix, baseline=index.baseline)
    os.replace(partial, path)  # atomic: a reader sees the old file or the whole new one
    return index
