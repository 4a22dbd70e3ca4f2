"""Chunk vectors in LanceDB (incremental) and reranked evidence per user and profile question."""

import time

import dagster as dg
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import (
    only_when_worked,
    ownership,
    stored_table,
    vector_table,
)
from profiling_assets.config import Settings
from profiling_assets.core.embedding_plan import batches, plan_embedding
from profiling_assets.core.evidence import build_cohort_evidence, user_chunks_from_vectors
from profiling_assets.core.questions import questions_from_spec
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.core.stats import latency_ms
from profiling_assets.executors import model_step_tags
from profiling_assets.models.registry import ModelIdentities
from profiling_assets.partitions import cohort_partitions
from profiling_assets.pools import embeddings_pool, evidence_pool
from profiling_assets.resources import ModelHub
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.vectors import VectorStore
from profiling_assets.stores.warehouse import read_partition, replace_partition

EMBEDDINGS_CODE_VERSION = "embeddings-v1"
EVIDENCE_CODE_VERSION = "evidence-v1"
# Vectors are written in batches so a crash keeps what finished and a re-run embeds the rest.
UPSERT_BATCH = 256


def build_retrieval_assets(
    settings: Settings, spec: ProfileSpec, identities: ModelIdentities
) -> list[dg.AssetsDefinition]:
    embedder_id = identities.embedder
    reranker_id = identities.reranker
    questions = questions_from_spec(spec)
    questions_hash = spec.part_hash("questions")

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=["document_chunks"],
        group_name="retrieval",
        kinds={"lancedb"},
        pool=embeddings_pool(settings),
        op_tags=model_step_tags(),
        code_version=f"{EMBEDDINGS_CODE_VERSION}|{embedder_id}",
        **ownership("chunk_embeddings"),
        description="Vectors of the cohort's chunks; only chunks without a vector are embedded.",
    )
    def chunk_embeddings(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
        models: ModelHub,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        with duckdb.get_connection() as con:
            chunks = read_partition(con, TABLES.chunks, cohort)
        store = VectorStore(settings.lancedb_dir, embedder_id)
        plan = plan_embedding(chunks, store.cohort_ids(cohort))
        embedded, seconds = 0, 0.0
        for batch in batches(plan.to_embed, UPSERT_BATCH):
            started = time.perf_counter()
            vectors = models.embedder.embed_passages(batch["text"].to_list())
            seconds += time.perf_counter() - started
            embedded += store.upsert(batch, vectors)
        deleted = store.delete_absent(cohort, plan.keep_ids)
        # Still inside the step's pool (one writer per table): each batch and delete above
        # left a version and a fragment; compact, index and drop old versions now.
        health = store.upkeep()
        context.log.info(
            "%d chunks embedded, %d reused, %d deleted", embedded, plan.num_reused, deleted
        )
        context.log.info("%s: %s", store.name, health)
        # Rates only when it embedded (a no-op run has no speed; reading load_s would
        # otherwise build the embedder).
        rates = (
            {
                "items_per_s": embedded / seconds if seconds else 0.0,
                "embed_seconds": seconds,
                "load_s": float(getattr(models.embedder, "load_s", 0.0)),
            }
            if embedded
            else {}
        )
        return dg.MaterializeResult(
            metadata={
                "num_chunks": len(plan.keep_ids),
                "num_embedded": embedded,
                "num_reused": plan.num_reused,
                "num_deleted": deleted,
                **rates,
                "model_identity": str(embedder_id),
                "lancedb_table": store.name,
                **health.metadata(),
                **vector_table(store, cohort),
            }
        )

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=[chunk_embeddings],
        group_name="retrieval",
        kinds={"duckdb"},
        pool=evidence_pool(settings),
        op_tags=model_step_tags(),
        code_version=(
            f"{EVIDENCE_CODE_VERSION}|{questions_hash}|{embedder_id}|{reranker_id}"
            f"|k{settings.evidence_top_k}|n{settings.evidence_top_n}"
        ),
        **ownership("profile_evidence"),
        description="Per user and profile question: top-k by vector → reranked → top-n chunks.",
    )
    def profile_evidence(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
        models: ModelHub,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        vectors = VectorStore(settings.lancedb_dir, embedder_id).cohort_frame(cohort)
        with duckdb.get_connection() as con:
            previous = read_partition(con, TABLES.evidence, cohort)
            users = user_chunks_from_vectors(vectors)
            result = build_cohort_evidence(
                users,
                previous,
                models.embedder,
                models.reranker,
                questions,
                identities=(str(embedder_id), str(reranker_id), questions_hash),
                top_k=settings.evidence_top_k,
                top_n=settings.evidence_top_n,
                cohort=cohort,
            )
            replace_partition(con, TABLES.evidence, cohort, result.frame)
        stats = result.stats
        figures = {
            "num_users": len(users),
            "num_users_reused": result.num_reused,
            "num_rows": result.frame.height,
            "num_questions": len(questions),
            "pairs_scored": stats.pairs_scored,
            "pairs_per_s": stats.pairs_scored / stats.rerank_seconds
            if stats.rerank_seconds
            else 0.0,
            "latency_p50_ms": latency_ms(stats.latencies_s, 50),
            "latency_p95_ms": latency_ms(stats.latencies_s, 95),
            "reranker_identity": str(reranker_id),
        }
        return dg.MaterializeResult(
            metadata={
                **only_when_worked(figures, stats.pairs_scored > 0),
                **stored_table(duckdb, TABLES.evidence, cohort),
            }
        )

    return [chunk_embeddings, profile_evidence]
