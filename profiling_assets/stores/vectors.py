"""LanceDB chunk vectors: one table per embedder identity, upserted by chunk id.

A new embedder writes a new table, so the old vectors stay queryable until the new table is
complete (a model upgrade never leaves the pipeline without vectors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.index import Bitmap, BTree

from profiling_assets.models.base import ModelIdentity
from profiling_assets.stores.names import safe_cohort

_CHUNK_ID = re.compile(r"^[0-9a-f]{8,64}$")
TABLE_PREFIX = "chunks_"
# Old versions' files are removed once older than this. Not zero: a step of another cohort's
# run may be reading the table at the version it opened (evidence, profiles, segments are
# outside the `lancedb` pool), and removing that version's files would fail its read.
VERSION_RETENTION = timedelta(minutes=5)
# Filters are `cohort = …` (few values: a bitmap) and `chunk_id IN (…)` (unique: a b-tree).
SCALAR_INDEXES = {"cohort": Bitmap, "chunk_id": BTree}


@dataclass(frozen=True)
class TableHealth:
    """What upkeep leaves behind, as numbers the UI can plot over runs."""

    name: str
    num_rows: int
    num_versions: int
    num_fragments: int
    num_small_fragments: int
    num_indices: int
    bytes_on_disk: int

    def metadata(self) -> dict[str, int]:
        return {
            "lancedb_rows": self.num_rows,
            "lancedb_versions": self.num_versions,
            "lancedb_fragments": self.num_fragments,
            "lancedb_small_fragments": self.num_small_fragments,
            "lancedb_indices": self.num_indices,
            "lancedb_bytes": self.bytes_on_disk,
        }


def table_name(identity: ModelIdentity) -> str:
    return f"{TABLE_PREFIX}{identity.slug}"


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
        self._root = root
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

    def cohort_count(self, cohort: str) -> int:
        return self.table().count_rows(f"cohort = '{safe_cohort(cohort)}'")

    def columns(self) -> list[tuple[str, str]]:
        """(column, Arrow type) of the table as stored."""
        return [(field.name, str(field.type)) for field in self.table().schema]

    def upkeep(self, retention: timedelta | None = None) -> TableHealth:
        """After writes, by the one writer: scalar indexes, then compaction of small
        fragments, index update and removal of versions older than `retention`."""
        table = self.table()
        if table.count_rows():  # an index needs rows to train on
            _ensure_scalar_indexes(table)
        keep = VERSION_RETENTION if retention is None else retention
        table.optimize(cleanup_older_than=keep)
        return self.health()

    def health(self) -> TableHealth:
        table = self.table()
        stats = table.stats()  # a TypedDict in lancedb 0.40
        return TableHealth(
            name=self.name,
            num_rows=stats["num_rows"],
            num_versions=len(table.list_versions()),
            num_fragments=stats["fragment_stats"]["num_fragments"],
            num_small_fragments=stats["fragment_stats"]["num_small_fragments"],
            num_indices=stats["num_indices"],
            bytes_on_disk=table_bytes(self._root, self.name),
        )


def _ensure_scalar_indexes(table: lancedb.table.Table) -> None:
    indexed = {column for index in table.list_indices() for column in index.columns}
    for column, config in SCALAR_INDEXES.items():
        if column not in indexed:
            table.create_index(column, config=config())


def table_bytes(root: Path, name: str) -> int:
    """Every file of the table on disk: data, deletions, indexes and manifests."""
    folder = root / f"{name}.lance"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def vector_tables(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(
        name
        for name in lancedb.connect(str(root)).list_tables().tables
        if name.startswith(TABLE_PREFIX)
    )


def retired_tables(root: Path, current: ModelIdentity) -> list[str]:
    """Vector tables of embedders other than the configured one."""
    return [name for name in vector_tables(root) if name != table_name(current)]


def drop_tables(root: Path, names: list[str]) -> None:
    db = lancedb.connect(str(root))
    for name in names:
        db.drop_table(name)
