"""Label candidates for a user: which tags, projects and concerns their chunks talk about.

Each label's text is embedded once as a query (`LabelIndex`); a user's chunk vectors, already
computed for retrieval, are scored against the whole label matrix in one matrix product.
A label's score is its best cosine over the user's chunks and the citation is that chunk.

Calibration: embedders such as e5 put every Chinese sentence pair at cosine ~0.8–0.9, and a
label with a generic description sits higher than a specific one on *every* chunk. Raw
cosines are therefore not comparable across labels. When the index is given background
chunk vectors (a sample of the cohort's chunks), each label's mean cosine over that
background is subtracted, so a score says "how much more this user talks about the label
than a typical chunk does": ~0 is ordinary, clearly positive is a signal, and one
`min_score` threshold works for every label. Without a background the baseline is 0 and
scores are raw cosines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from profiling_assets.core.records import EvidenceItem, SignalCandidate
from profiling_assets.models.base import Embedder

# Enough chunks for a stable per-label mean; more only costs time.
MAX_BACKGROUND = 5_000
_SCORE_DIGITS = 4


class LabelLike(Protocol):
    """What the scorer needs of a label (`labels.Label` has these fields)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...


class LabelIndex:
    """The label matrix of one embedder, embedded once and reused for every user."""

    def __init__(
        self,
        embedder: Embedder,
        labels: Sequence[LabelLike],
        background: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if not labels:
            raise ValueError("LabelIndex needs at least one label")
        self.embedder = embedder
        self.labels = list(labels)
        # The name is the most specific phrase a user would write; the description adds
        # the synonyms, so both go into the query text.
        texts = [f"{label.name}：{label.description}" for label in self.labels]
        self.matrix = np.asarray(embedder.embed_queries(texts), dtype=np.float32)
        self.baseline = np.zeros(len(self.labels), dtype=np.float32)
        if background is not None and len(background) > 0:
            self.baseline = self._background_mean(background, seed)

    def _background_mean(self, background: np.ndarray, seed: int) -> np.ndarray:
        rows = np.asarray(background, dtype=np.float32)
        self._check_dim(rows)
        if len(rows) > MAX_BACKGROUND:
            pick = np.random.default_rng(seed).choice(len(rows), MAX_BACKGROUND, replace=False)
            rows = rows[pick]
        return (rows @ self.matrix.T).mean(axis=0)

    def _check_dim(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.matrix.shape[1]:
            raise ValueError(
                f"chunk vectors have shape {vectors.shape}; labels were embedded with "
                f"{self.matrix.shape[1]} dimensions by {self.embedder.identity}"
            )

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated best score per label and the row of the chunk that gave it."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self._check_dim(vectors)
        sims = vectors @ self.matrix.T  # chunks × labels
        best_row = sims.argmax(axis=0)
        best = sims[best_row, np.arange(len(self.labels))] - self.baseline
        return best, best_row


def score_label_candidates(
    index: LabelIndex,
    chunk_ids: Sequence[str],
    vectors: np.ndarray,
    top_per_kind: int = 3,
    min_score: float = 0.0,
) -> list[SignalCandidate]:
    """Top labels per kind over one user's chunks, best first, each citing its best chunk.

    `vectors` are the user's chunk vectors (rows aligned with `chunk_ids`) from the same
    embedder as the index; `min_score` is on the calibrated scale (see the module doc).
    """
    if len(chunk_ids) != len(vectors):
        raise ValueError(f"{len(chunk_ids)} chunk ids for {len(vectors)} vectors")
    if not chunk_ids:
        return []
    best, best_row = index.scores(vectors)
    per_kind: dict[str, list[SignalCandidate]] = {}
    for i in np.argsort(-best, kind="stable"):
        label = index.labels[i]
        score = float(best[i])
        taken = per_kind.setdefault(label.kind, [])
        if score < min_score or len(taken) >= top_per_kind:
            continue
        taken.append(
            SignalCandidate(
                kind=label.kind,
                label=label.name,
                score=round(score, _SCORE_DIGITS),
                chunk_id=chunk_ids[best_row[i]],
            )
        )
    return [candidate for kind in sorted(per_kind) for candidate in per_kind[kind]]


def score_evidence(
    index: LabelIndex,
    evidence: Sequence[EvidenceItem] | Sequence[tuple[str, str]],
    top_per_kind: int = 3,
    min_score: float = 0.0,
) -> list[SignalCandidate]:
    """`score_label_candidates` for chunks that have no vectors yet: embeds them as passages.

    Accepts evidence items or `(chunk_id, text)` pairs; a chunk retrieved for several
    questions is embedded once.
    """
    texts: dict[str, str] = {}
    for item in evidence:
        chunk_id, text = (item.chunk_id, item.text) if isinstance(item, EvidenceItem) else item
        texts.setdefault(chunk_id, text)
    if not texts:
        return []
    vectors = index.embedder.embed_passages(list(texts.values()))
    return score_label_candidates(index, list(texts), vectors, top_per_kind, min_score)
