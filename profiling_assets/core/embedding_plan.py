"""Which chunks need a vector: only those not yet stored; which stored vectors are stale."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class EmbeddingPlan:
    to_embed: pl.DataFrame
    keep_ids: set[str]
    num_reused: int


def plan_embedding(chunks: pl.DataFrame, stored_ids: set[str]) -> EmbeddingPlan:
    ids = set(chunks["chunk_id"].to_list()) if chunks.height else set()
    to_embed = (
        chunks.filter(~pl.col("chunk_id").is_in(list(stored_ids))) if chunks.height else chunks
    )
    return EmbeddingPlan(to_embed=to_embed, keep_ids=ids, num_reused=len(ids & stored_ids))


def batches(df: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [df.slice(start, size) for start in range(0, df.height, size)]
