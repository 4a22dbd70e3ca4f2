"""How good the cohort's profiles are, scored against the source's truth table when it has one."""

import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import ownership, stored_table
from profiling_assets.config import Settings
from profiling_assets.core.contract import TRUTH_TABLE
from profiling_assets.core.profiling.answer import INJECTION_ANOMALY
from profiling_assets.core.profiling.stored import latest_profiles
from profiling_assets.core.quality import (
    QualityScores,
    score_profiles,
    summary_markdown,
)
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.models.registry import ModelIdentities
from profiling_assets.partitions import cohort_partitions
from profiling_assets.stores.source import has_truth, open_configured_source, read_cohort_table
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import read_partition, replace_rows

QUALITY_CODE_VERSION = "quality-v1"


def quality_row(
    cohort: str, run_id: str, llm_id: str, embedder_id: str, scores: QualityScores
) -> pl.DataFrame:
    """One `profile_quality` row: who was scored by which models, every metric a column."""
    row = {"cohort": cohort, "run_id": run_id, "llm_identity": llm_id}
    row |= {"embedder_identity": embedder_id, **scores.model_dump()}
    row["created_at"] = datetime.now(UTC).replace(tzinfo=None)
    return pl.DataFrame([row], schema=TABLES.quality.schema)


def truth_vocabulary(spec: ProfileSpec) -> dict[str, tuple[str, ...]]:
    """Truth column → the spec names it is scored in."""
    return {
        "intended_project": spec.label_names("intended_projects"),
        "tags": spec.label_names("tags"),
        "concerns": spec.label_names("concerns"),
        "anomalies": (*spec.anomaly_names, INJECTION_ANOMALY),
    }


def build_quality_assets(
    settings: Settings, spec: ProfileSpec, identities: ModelIdentities
) -> list[dg.AssetsDefinition]:
    llm_id = str(identities.llm)
    embedder_id = str(identities.embedder)
    vocabulary = truth_vocabulary(spec)

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=["user_profiles", "profile_evidence", "document_chunks"],
        group_name="insights",
        kinds={"duckdb"},
        code_version=f"{QUALITY_CODE_VERSION}|{spec.part_hash('quality')}|{embedder_id}|{llm_id}",
        description="Profiles scored against the source's truth table (synthetic data).",
        **ownership("profile_quality"),
    )
    def profile_quality(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        with open_configured_source(settings, spec) as source:
            truth = read_cohort_table(source, TRUTH_TABLE, cohort) if has_truth(source) else None
        identities = {"llm_identity": llm_id, "embedder_identity": embedder_id}
        if truth is None:
            context.log.info("source has no %s table: nothing to score", TRUTH_TABLE)
            return dg.MaterializeResult(metadata={"has_truth": False, **identities})
        with duckdb.get_connection() as con:
            latest = latest_profiles(read_partition(con, TABLES.profiles, cohort), llm_id)
            evidence = read_partition(con, TABLES.evidence, cohort, ["user_id", "chunk_id"])
            chunks = read_partition(
                con, TABLES.chunks, cohort, ["user_id", "chunk_id", "source_ids"]
            )
        users = latest["user_id"].to_list()
        scores = score_profiles(
            truth,
            {u: json.loads(p) for u, p in zip(users, latest["profile_json"], strict=True)},
            evidence,
            chunks,
            facts=dict(zip(users, latest["facts_json"], strict=True)),
            vocabulary=vocabulary,
            cited_sets=dict(zip(users, latest["evidence_ids"].to_list(), strict=True)),
        )
        row = quality_row(cohort, context.run_id, llm_id, embedder_id, scores)
        with duckdb.get_connection() as con:
            replace_rows(con, TABLES.quality, row, {"cohort": cohort, "run_id": context.run_id})
        context.log.info("%d users scored against truth", scores.num_users)
        plotted = {k: v for k, v in scores.model_dump().items() if v is not None}
        return dg.MaterializeResult(
            metadata={
                "has_truth": True,
                **plotted,
                **identities,
                "evidence_top_n": settings.evidence_top_n,
                "summary": dg.MetadataValue.md(summary_markdown(scores)),
                **stored_table(duckdb, TABLES.quality, cohort),
            }
        )

    return [profile_quality]
