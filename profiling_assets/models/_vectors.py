"""Row normalisation shared by every embedder, so all of them honour one contract."""

from __future__ import annotations

import numpy as np


def unit_rows(matrix: np.ndarray, dim: int) -> np.ndarray:
    """Float32 rows scaled to length 1; an empty input becomes a (0, dim) matrix.

    Backends already normalise, but not all in float32 and not all exactly; doing it once
    here means cosine similarity is a plain dot product everywhere downstream.
    """
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    # A zero vector (an empty text on some backends) stays zero instead of becoming NaN.
    return rows / np.where(norms == 0, 1.0, norms).astype(np.float32)
