"""LanceDB chunk vectors: one table per embedder identity, upserted by chunk id.

A new embedder writes a new table, so the old vectors stay queryable until the new table is
complete (a model upgrade never leaves the pipeline without vectors).
"""

from __future__ import annotations

import re
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa

from profiling_assets.models.base import ModelIdentity
from profiling_assets.stores.names import safe_cohort

_CHUNK_ID = re.compile(r"^[0-9a-f]{8,64}$")


def table_name(identity: ModelIdentity) -> str:
    return f"chunks_{identity.slug}"


def vector_schema(dim: int) -> pa.Schema:
    """The table's schema, declared once (chunk id is the merge key)."""
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string()),
            pa.field("cohort", pa.string()),
            pa.field("heading_path", pa.string()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


class VectorStore:
    def __init__(self, root: Path, identity: ModelIdentity) -> None:
        self.identity = identity
        self.name = table_name(identity)
        root.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(root))

    def table(self) -> lancedb.table.Table:
        existing = self._db.list_tables().tables if hasattr(self._db, "list_tables") else []
        if self.name in existing:
            return self._db.open_table(self.name)
        return self._db.create_table(
            self.name, schema=vector_schema(self.identity.dim), exist_ok=True
        )

    def cohort_ids(self, cohort: str) -> set[str]:
        frame = self.cohort_frame(cohort, columns=["chunk_id"])
        return set(frame["chunk_id"].to_list())

    def cohort_frame(self, cohort: str, columns: list[str] | None = None) -> pl.DataFrame:
        table = self.table()
        query = table.search().where(f"cohort = '{safe_cohort(cohort)}'").limit(None)
        if columns:
            query = query.select(columns)
        return pl.from_arrow(query.to_arrow())  # type: ignore[return-value]

    def upsert(self, rows: pl.DataFrame, vectors: np.ndarray) -> int:
        """Insert or replace rows keyed on chunk id (re-running a crashed write is safe)."""
        if rows.height == 0:
            return 0
        data = rows.select("chunk_id", "user_id", "cohort", "heading_path", "text").to_arrow()
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        data = data.append_column(
            "vector", pa.FixedSizeListArray.from_arrays(flat, self.identity.dim)
        ).cast(vector_schema(self.identity.dim))
        (
            self.table()
            .merge_insert("chunk_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )
        return rows.height

    def delete_absent(self, cohort: str, keep: set[str]) -> int:
        """Delete the cohort's vectors whose chunk no longer exists."""
        stale = sorted(self.cohort_ids(cohort) - keep)
        for start in range(0, len(stale), 500):
            batch = stale[start : start + 500]
            if not all(_CHUNK_ID.match(i) for i in batch):
                raise ValueError("refusing to build a delete filter from non-hex chunk ids")
            ids = ", ".join(f"'{i}'" for i in batch)
            self.table().delete(f"cohort = '{safe_cohort(cohort)}' AND chunk_id IN ({ids})")
        return len(stale)

    def count(self) -> int:
        return self.table().count_rows()
