"""Every table the assets store in the warehouse: its name, its columns and their types, and
the columns that identify a row. Reads and writes (`warehouse.py`) take an entry of `TABLES`,
so a table that is not written yet reads as an empty frame with its columns all the same."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType

import polars as pl

from profiling_assets.core.chunking import CHUNK_SCHEMA
from profiling_assets.core.contract import SOURCE_TABLES, TableContract
from profiling_assets.core.documents import LINE_STRUCT
from profiling_assets.core.evidence import EVIDENCE_SCHEMA
from profiling_assets.core.identity import (
    EXCLUDED_SCHEMA,
    MERGE_SCHEMA,
    NODE_SCHEMA,
    OVERSIZE_SCHEMA,
    PERSON_SCHEMA,
)
from profiling_assets.core.profiling.stored import FAILURE_ROW_SCHEMA, PROFILE_ROW_SCHEMA
from profiling_assets.core.quality import COUNT_FIELDS, RATE_FIELDS
from profiling_assets.core.validate import REJECTED_SCHEMA
from profiling_assets.stores.names import safe_table

Schema = Mapping[str, pl.DataType | type[pl.DataType]]


@dataclass(frozen=True)
class StoredTable:
    """One warehouse table: `key` names the columns that identify a row (a history table
    replaces a stored row with the same key values)."""

    name: str
    schema: Schema
    key: tuple[str, ...]

    def __post_init__(self) -> None:
        safe_table(self.name)
        object.__setattr__(self, "schema", MappingProxyType(dict(self.schema)))
        unknown = [c for c in self.key if c not in self.schema]
        if unknown:
            raise ValueError(f"{self.name}: key columns {unknown} are not in its schema")

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def empty(self, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """No rows, with the table's columns (or the named ones) and their types."""
        names = list(columns) if columns else self.columns
        return pl.DataFrame(schema={c: self.schema[c] for c in names})


def _source_table(contract: TableContract) -> StoredTable:
    """A validated source table: the contract's columns, then the cohort the pipeline adds."""
    schema = {c.name: c.dtype for c in contract.columns} | {"cohort": pl.String}
    return StoredTable(contract.name, schema, ("cohort", contract.key))


_DOCUMENT_SCHEMA = {
    "cohort": pl.String,
    "user_id": pl.String,
    "markdown": pl.String,
    "lines": pl.List(LINE_STRUCT),
}
_SEGMENT_SCHEMA = {
    "cohort": pl.String,
    "user_id": pl.String,
    "segment_id": pl.Int64,
    "segment_name": pl.String,
    "k": pl.Int32,
}
# Every metric a column, then who was scored by which models.
_QUALITY_SCHEMA: dict[str, type[pl.DataType] | pl.DataType] = {
    **{name: pl.Float64 for name in RATE_FIELDS},
    **{name: pl.Int64 for name in COUNT_FIELDS},
    **{k: pl.String for k in ("cohort", "run_id", "llm_identity", "embedder_identity")},
    "created_at": pl.Datetime("us"),
}


@dataclass(frozen=True)
class Tables:
    """The registry: one entry per stored table (`latest_profiles` is a view over
    `user_profiles`, read like a table)."""

    users: StoredTable
    sales: StoredTable
    behaviour: StoredTable
    chat: StoredTable
    rejected_rows: StoredTable
    documents: StoredTable
    chunks: StoredTable
    evidence: StoredTable
    profiles: StoredTable
    failures: StoredTable
    latest_profiles: StoredTable
    segments: StoredTable
    quality: StoredTable
    identity_nodes: StoredTable
    persons: StoredTable
    identity_excluded: StoredTable
    identity_oversize: StoredTable
    person_merges: StoredTable

    def __iter__(self) -> Iterator[StoredTable]:
        return (getattr(self, f.name) for f in fields(self))

    def named(self, name: str) -> StoredTable:
        """The entry of the table called `name` (a source table's name comes as text)."""
        for table in self:
            if table.name == name:
                return table
        raise KeyError(f"no stored table {name!r}")

    @property
    def source(self) -> tuple[StoredTable, ...]:
        """The validated source tables, in the contract's order."""
        return tuple(self.named(name) for name in SOURCE_TABLES)


TABLES = Tables(
    **{name: _source_table(contract) for name, contract in SOURCE_TABLES.items()},
    rejected_rows=StoredTable(
        "rejected_rows", REJECTED_SCHEMA, ("cohort", "table_name", "row_key")
    ),
    documents=StoredTable("user_documents", _DOCUMENT_SCHEMA, ("cohort", "user_id")),
    chunks=StoredTable("document_chunks", CHUNK_SCHEMA, ("cohort", "chunk_id")),
    evidence=StoredTable(
        "profile_evidence", EVIDENCE_SCHEMA, ("cohort", "user_id", "question_id", "chunk_id")
    ),
    profiles=StoredTable(
        "user_profiles", PROFILE_ROW_SCHEMA, ("user_id", "input_key", "llm_identity")
    ),
    failures=StoredTable("profile_failures", FAILURE_ROW_SCHEMA, ("user_id", "run_id")),
    latest_profiles=StoredTable("latest_profiles", PROFILE_ROW_SCHEMA, ("user_id",)),
    segments=StoredTable("user_segments", _SEGMENT_SCHEMA, ("cohort", "user_id")),
    quality=StoredTable("profile_quality", _QUALITY_SCHEMA, ("cohort", "run_id")),
    identity_nodes=StoredTable("identity_nodes", NODE_SCHEMA, ("node",)),
    persons=StoredTable("persons", PERSON_SCHEMA, ("person_id",)),
    identity_excluded=StoredTable("identity_excluded", EXCLUDED_SCHEMA, ("node",)),
    identity_oversize=StoredTable("identity_oversize", OVERSIZE_SCHEMA, ("component",)),
    person_merges=StoredTable("person_merges", MERGE_SCHEMA, ("merged_person_id",)),
)
