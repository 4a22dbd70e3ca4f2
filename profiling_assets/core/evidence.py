"""A cohort's evidence table, reusing the rows of users whose evidence key did not change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from profiling_assets.core.questions import ProfileQuestion
from profiling_assets.core.retrieval import (
    RetrievalStats,
    UserChunks,
    evidence_key,
    retrieve_user_evidence,
)
from profiling_assets.models.base import Embedder, Reranker

EVIDENCE_SCHEMA = {
    "cohort": pl.String,
    "user_id": pl.String,
    "question_id": pl.String,
    "chunk_id": pl.String,
    "rank": pl.Int64,
    "retrieval_score": pl.Float64,
    "rerank_score": pl.Float64,
    "heading_path": pl.String,
    "text": pl.String,
    "evidence_key": pl.String,
}


@dataclass(frozen=True)
class EvidenceResult:
    frame: pl.DataFrame
    stats: RetrievalStats
    num_reused: int


def user_chunks_from_vectors(frame: pl.DataFrame) -> list[UserChunks]:
    """Group the cohort's stored vectors by user, chunks in a stable order."""
    if frame.height == 0:
        return []
    users = []
    for (user_id,), group in frame.sort("user_id", "chunk_id").group_by(
        "user_id", maintain_order=True
    ):
        users.append(
            UserChunks(
                user_id=str(user_id),
                chunk_ids=group["chunk_id"].to_list(),
                texts=group["text"].to_list(),
                heading_paths=group["heading_path"].to_list(),
                vectors=np.asarray(group["vector"].to_numpy(), dtype=np.float32),
            )
        )
    return users


def build_cohort_evidence(
    users: Sequence[UserChunks],
    previous: pl.DataFrame,
    embedder: Embedder,
    reranker: Reranker,
    questions: Sequence[ProfileQuestion],
    identities: Sequence[str],
    top_k: int,
    top_n: int,
    cohort: str,
) -> EvidenceResult:
    stats = RetrievalStats()
    reusable = set(previous["evidence_key"].to_list()) if previous.height else set()
    frames: list[pl.DataFrame] = []
    fresh_rows: list[dict] = []
    reused = 0
    query_vectors: np.ndarray | None = None
    for user in users:
        key = evidence_key(user, identities, top_k, top_n)
        if key in reusable:
            frames.append(previous.filter(pl.col("evidence_key") == key))
            reused += 1
            continue
        if query_vectors is None:  # embedded once, and only when some user needs it
            query_vectors = embedder.embed_queries([q.text for q in questions])
        items = retrieve_user_evidence(
            user, questions, query_vectors, reranker, top_k, top_n, stats
        )
        fresh_rows.extend(
            {**item.model_dump(), "cohort": cohort, "evidence_key": key} for item in items
        )
    frames.append(pl.DataFrame(fresh_rows, schema=EVIDENCE_SCHEMA))
    frame = pl.concat([f.select(list(EVIDENCE_SCHEMA)) for f in frames])
    return EvidenceResult(frame=frame, stats=stats, num_reused=reused)
