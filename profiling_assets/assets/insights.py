"""Cohort-level views over the profiles: embedding segments and the Markdown report."""

import json
from collections import Counter

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import (
    REPORT_FRESHNESS,
    distribution,
    distribution_tables,
    ownership,
    stored_table,
)
from profiling_assets.config import Settings
from profiling_assets.core.contract import SOURCE_TABLES as SOURCE_CONTRACT
from profiling_assets.core.facts import compute_user_facts, spend_thresholds
from profiling_assets.core.profiling.plan import facts_as_of
from profiling_assets.core.profiling.schema import field_values
from profiling_assets.core.profiling.stored import latest_profiles
from profiling_assets.core.report import (
    ReportSpec,
    cohort_numbers,
    render_cohort_report,
    report_numbers,
)
from profiling_assets.core.segments import cluster_users, name_segments, user_vectors
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.models.registry import ModelIdentities
from profiling_assets.partitions import cohort_partitions
from profiling_assets.stores.names import safe_cohort
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.vectors import VectorStore
from profiling_assets.stores.warehouse import read_partition, replace_partition

SEGMENTS_CODE_VERSION = "segments-v1"
REPORT_CODE_VERSION = "report-v1"
SOURCE_TABLES = tuple(SOURCE_CONTRACT)


def _profile_dicts(latest: pl.DataFrame) -> dict[str, dict]:
    return {
        u: json.loads(p) for u, p in zip(latest["user_id"], latest["profile_json"], strict=True)
    }


def build_insight_assets(
    settings: Settings, spec: ProfileSpec, identities: ModelIdentities
) -> list[dg.AssetsDefinition]:
    embedder_id = identities.embedder
    llm_id = str(identities.llm)
    segments_hash, report_hash = spec.part_hash("segments"), spec.part_hash("report")

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=["chunk_embeddings", "user_profiles"],
        group_name="insights",
        kinds={"duckdb"},
        code_version=f"{SEGMENTS_CODE_VERSION}|{segments_hash}|{embedder_id}|{llm_id}",
        description="Users clustered by their embeddings (k by silhouette), named in Chinese.",
        **ownership("user_segments"),
    )
    def user_segments(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        vectors = VectorStore(settings.lancedb_dir, embedder_id).cohort_frame(
            cohort, columns=["user_id", "vector"]
        )
        with duckdb.get_connection() as con:
            profiles = _profile_dicts(
                latest_profiles(read_partition(con, TABLES.profiles, cohort), llm_id)
            )
        if vectors.height == 0:
            rows = TABLES.segments.empty()
            result, names = None, {}
        else:
            users, matrix = user_vectors(vectors["user_id"].to_list(), vectors["vector"].to_numpy())
            result = cluster_users(users, matrix)
            names = name_segments(
                result.assignments,
                {u: field_values(p, "intended_projects") for u, p in profiles.items()},
                {u: field_values(p, "tags") for u, p in profiles.items()},
            )
            rows = pl.DataFrame(
                {
                    "cohort": cohort,
                    "user_id": list(result.assignments),
                    "segment_id": list(result.assignments.values()),
                    "segment_name": [names[s] for s in result.assignments.values()],
                    "k": result.k,
                }
            )
        with duckdb.get_connection() as con:
            replace_partition(con, TABLES.segments, cohort, rows)
        sizes = {names[s]: n for s, n in result.sizes.items()} if result else {}
        listing = "\n".join(f"- {name}：{n} 人" for name, n in sizes.items())
        return dg.MaterializeResult(
            metadata={
                "num_users": rows.height,
                "num_segments": len(sizes),
                "best_silhouette": max(result.silhouettes.values(), default=0.0) if result else 0.0,
                "segments": dg.MetadataValue.md(listing or "无"),
                "segment_distribution": distribution(
                    "用户分群",
                    sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])),
                    rows.height,
                ),
                **stored_table(duckdb, TABLES.segments, cohort),
            }
        )

    @dg.asset(
        partitions_def=cohort_partitions,
        deps=[user_segments, "user_profiles", *SOURCE_TABLES],
        group_name="insights",
        kinds={"markdown"},
        freshness_policy=REPORT_FRESHNESS,
        code_version=f"{REPORT_CODE_VERSION}|{report_hash}|{llm_id}",
        description="Cohort report: tags, intended projects, purchase intent, segments, spend.",
        **ownership("cohort_report"),
    )
    def cohort_report(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ) -> dg.MaterializeResult:
        cohort = context.partition_key
        with duckdb.get_connection() as con:
            tables = {t.name: read_partition(con, t, cohort) for t in TABLES.source}
            latest = latest_profiles(read_partition(con, TABLES.profiles, cohort), llm_id)
            segments = read_partition(con, TABLES.segments, cohort)
        as_of = facts_as_of(tables["sales"], tables["behaviour"], tables["chat"])
        facts = compute_user_facts(
            **tables, as_of=as_of, spending=spec.spending, recent_days=spec.facts.recent_days
        )
        report_spec = ReportSpec(
            spec.business.name,
            spec.business.currency,
            spend_thresholds(spec.spending, facts["total_spend"]),
            spec.spending.top,
        )
        novel = Counter(v for values in latest["novel_labels"].to_list() for v in values or [])
        profiles = list(_profile_dicts(latest).values())
        sizes = dict(segments.group_by("segment_name").len().sort("len", descending=True).rows())
        markdown = render_cohort_report(cohort, facts, profiles, sizes, report_spec, novel)
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        path = settings.reports_dir / f"{safe_cohort(cohort)}.md"
        path.write_text(markdown, encoding="utf-8")
        figures = report_numbers(facts, profiles, sizes, report_spec)
        numbers = {k: float(v) for k, v in figures.items()}
        # Per-label counts have Chinese keys (tag_抗衰): they go to the distribution tables
        # below, the ASCII figures are plotted one key each.
        plotted = {k: v for k, v in numbers.items() if k.isascii()}
        return dg.MaterializeResult(
            metadata={
                **plotted,
                **distribution_tables(cohort_numbers(facts, profiles, sizes, report_spec)),
                "report_path": dg.MetadataValue.path(str(path)),
                "report": dg.MetadataValue.md(markdown),
            }
        )

    return [user_segments, cohort_report]
