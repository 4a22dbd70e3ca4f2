"""Golden-structure Markdown documents per user, and their heading-aware overlap chunks."""

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import ownership, stored_table
from profiling_assets.config import Settings
from profiling_assets.core.chunking import ChunkingOptions, chunk_documents_frame
from profiling_assets.core.document_frames import render_documents_frame
from profiling_assets.core.documents import SalesLayout
from profiling_assets.core.lint import lint_document
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.partitions import cohort_partitions
from profiling_assets.stores.files import replace_cohort_files
from profiling_assets.stores.identity import read_person_map, with_id_sources
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import read_partition, replace_partition

DOCUMENTS_CODE_VERSION = "documents-v1"
CHUNKS_CODE_VERSION = "chunks-v1"


def build_document_assets(settings: Settings, spec: ProfileSpec) -> list:
    """Documents (sections from the spec), their lint check, and chunks."""
    layout = SalesLayout.from_spec(spec)
    headings = spec.sales_headings
    documents_version = f"{DOCUMENTS_CODE_VERSION}|{spec.part_hash('documents')}"

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=["users", "sales", "behaviour", "chat"],
        group_name="documents",
        kinds={"duckdb", "markdown"},
        code_version=documents_version,
        **ownership("user_documents"),
        description="One golden-structure Markdown document per user (PII masked).",
    )
    def user_documents(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        with duckdb.get_connection() as con:
            tables = {t.name: read_partition(con, t, cohort) for t in TABLES.source}
            if spec.identity.declared:
                tables["users"] = with_id_sources(tables["users"], read_person_map(con)[1])
            frame = render_documents_frame(**tables, layout=layout)
            replace_partition(con, TABLES.documents, cohort, frame)
        written = replace_cohort_files(
            settings.documents_dir, cohort, frame.select("user_id", "markdown").iter_rows(), ".md"
        )
        sample = frame["markdown"][0] if frame.height else "（本批次没有有效用户）"
        return dg.MaterializeResult(
            metadata={
                "num_users": frame.height,
                "num_files": written,
                "avg_chars": float(frame["markdown"].str.len_chars().mean() or 0),
                "sample": dg.MetadataValue.md(sample),
                **stored_table(duckdb, TABLES.documents, cohort),
            }
        )

    @dg.asset_check(
        asset=user_documents, blocking=True, description="Every document passes the lint."
    )
    def documents_follow_golden_structure(
        context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource
    ) -> dg.AssetCheckResult:
        cohort = context.partition_key if context.has_partition_key else None
        with duckdb.get_connection() as con:
            if cohort is None:
                return dg.AssetCheckResult(passed=True, metadata={"note": "no partition"})
            docs = read_partition(con, TABLES.documents, cohort, ["user_id", "markdown"])
        failures = {
            row[0]: [str(issue) for issue in lint_document(row[1], headings)]
            for row in docs.iter_rows()
        }
        failures = {user: issues for user, issues in failures.items() if issues}
        listing = "\n".join(f"- {u}: {'; '.join(i[:3])}" for u, i in list(failures.items())[:20])
        return dg.AssetCheckResult(
            passed=not failures,
            metadata={
                "num_documents": docs.height,
                "num_failing": len(failures),
                "failures": dg.MetadataValue.md(listing or "无"),
            },
        )

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=[user_documents],
        group_name="documents",
        kinds={"duckdb"},
        code_version=f"{CHUNKS_CODE_VERSION}|{settings.chunk_size}|{settings.chunk_overlap}",
        **ownership("document_chunks"),
        description="Heading-aware chunks, 100–150 characters of overlap, id = hash(user, text).",
    )
    def document_chunks(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        options = ChunkingOptions(size=settings.chunk_size, overlap=settings.chunk_overlap)
        with duckdb.get_connection() as con:
            documents = read_partition(
                con, TABLES.documents, cohort, ["user_id", "cohort", "lines"]
            )
            chunks = chunk_documents_frame(documents, options)
            replace_partition(con, TABLES.chunks, cohort, chunks)
        lengths = chunks["text"].str.len_chars() if chunks.height else pl.Series([0])
        return dg.MaterializeResult(
            metadata={
                "num_chunks": chunks.height,
                "num_users": chunks["user_id"].n_unique() if chunks.height else 0,
                "avg_chunk_chars": float(lengths.mean() or 0),
                "max_chunk_chars": int(lengths.max() or 0),
                "chunk_size": options.size,
                "chunk_overlap": options.overlap,
                **stored_table(duckdb, TABLES.chunks, cohort),
            }
        )

    return [user_documents, documents_follow_golden_structure, document_chunks]
