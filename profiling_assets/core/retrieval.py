"""Per user and question: exact vector search over the user's own chunks → rerank → top-n.

A user has tens of chunks, not millions, so the search is an exact dot product over the
user's vectors (loaded once per cohort from LanceDB) rather than an ANN query per user.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from profiling_assets.core.questions import ProfileQuestion
from profiling_assets.core.records import EvidenceItem
from profiling_assets.models.base import Reranker


@dataclass(frozen=True)
class UserChunks:
    user_id: str
    chunk_ids: list[str]
    texts: list[str]
    heading_paths: list[str]
    vectors: np.ndarray  # (n, dim), unit rows


@dataclass
class RetrievalStats:
    pairs_scored: int = 0
    rerank_seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)


def evidence_key(user: UserChunks, identities: Sequence[str], top_k: int, top_n: int) -> str:
    """Changes exactly when the user's evidence could change: chunks, models, questions, k, n."""
    digest = hashlib.sha256()
    for part in (*sorted(user.chunk_ids), *identities, str(top_k), str(top_n)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def retrieve_user_evidence(
    user: UserChunks,
    questions: Sequence[ProfileQuestion],
    query_vectors: np.ndarray,
    reranker: Reranker,
    top_k: int,
    top_n: int,
    stats: RetrievalStats,
) -> list[EvidenceItem]:
    if not user.chunk_ids:
        return []
    scores = user.vectors @ query_vectors.T  # (chunks, questions)
    items: list[EvidenceItem] = []
    for q, question in enumerate(questions):
        candidates = np.argsort(-scores[:, q], kind="stable")[:top_k]
        started = time.perf_counter()
        reranked = reranker.score(question.text, [user.texts[i] for i in candidates])
        took = time.perf_counter() - started
        stats.pairs_scored += len(candidates)
        stats.rerank_seconds += took
        stats.latencies_s.append(took)
        order = sorted(
            zip(candidates, reranked, strict=True), key=lambda pair: (-pair[1], pair[0])
        )[:top_n]
        items.extend(
            EvidenceItem(
                user_id=user.user_id,
                question_id=question.question_id,
                chunk_id=user.chunk_ids[i],
                rank=rank,
                retrieval_score=float(scores[i, q]),
                rerank_score=float(score),
                heading_path=user.heading_paths[i],
                text=user.texts[i],
            )
            for rank, (i, score) in enumerate(order, start=1)
        )
    return items
