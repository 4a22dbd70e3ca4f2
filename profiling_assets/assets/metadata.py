"""What the Dagster UI shows of every asset: owners and tags, stored table shapes,
distribution tables with Chinese labels, and rate figures only from runs that did work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from profiling_assets.core.report import CohortNumbers
from profiling_assets.stores.tables import StoredTable
from profiling_assets.stores.vectors import VectorStore
from profiling_assets.stores.warehouse import partition_shape

# Dagster owners are e-mail addresses or `team:<name>`; the one team that runs the pipeline.
OWNERS = ("team:user-profiling",)
DOMAIN_TAGS = {"domain": "user-profiling"}
# Which model an asset's output depends on: filter the graph by it before a model upgrade.
MODEL_TAGS = {
    "chunk_embeddings": "embedder",
    "profile_evidence": "reranker",
    "user_profiles": "llm",
    "user_segments": "embedder",
}

# The nightly schedule rebuilds every cohort's report; a report older than a missed night
# warns, older than two nights fails (the freshness daemon, `freshness.enabled` in
# dagster.yaml, evaluates it; the UI shows the state on the asset).
REPORT_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=50), warn_window=timedelta(hours=26)
)

# Figures that describe how fast work went. A run with nothing to do has no speed: writing 0
# would drag every plot in the UI to the floor on each no-op run, so these are left out then.
RATE_SUFFIXES = ("_per_s", "_ms", "_per_user")
RATE_KEYS = frozenset({"load_s", "embed_seconds"})


def is_rate(key: str) -> bool:
    return key in RATE_KEYS or key.endswith(RATE_SUFFIXES)


def only_when_worked(metadata: Mapping[str, Any], worked: bool) -> dict[str, Any]:
    """`metadata` without its rate figures when the run did no work (see RATE_SUFFIXES)."""
    return dict(metadata) if worked else {k: v for k, v in metadata.items() if not is_rate(k)}


def ownership(asset: str) -> dict[str, Any]:
    """Decorator arguments of every asset: the team as owner, the domain tag, and the model
    tag where one applies. (Passed to each decorator rather than mapped over the finished
    assets: `map_asset_specs` rebuilds multi-assets with checks through a beta code path.)"""
    tags = dict(DOMAIN_TAGS)
    if model := MODEL_TAGS.get(asset):
        tags["model"] = model
    return {"owners": list(OWNERS), "tags": tags}


def _schema(columns: Sequence[tuple[str, str]]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, dtype) for name, dtype in columns])


def shape_metadata(rows: int, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Dagster's standard keys: the UI shows the row count on the asset and the schema in
    its Columns tab."""
    metadata: dict[str, Any] = {"dagster/row_count": rows}
    if columns:  # a table not written yet has no schema to show
        metadata["dagster/column_schema"] = _schema(columns)
    return metadata


def stored_table(duckdb: DuckDBResource, table: StoredTable, cohort: str | None) -> dict[str, Any]:
    """Row count (of the cohort, or of the whole table) and schema as stored in DuckDB."""
    with duckdb.get_connection() as con:
        return shape_metadata(*partition_shape(con, table, cohort))


def vector_table(store: VectorStore, cohort: str) -> dict[str, Any]:
    """Row count of the cohort and schema of the LanceDB table."""
    return shape_metadata(store.cohort_count(cohort), store.columns())


def distribution(label: str, rows: Sequence[tuple[str, int]], total: int) -> dg.TableMetadataValue:
    """A count table with Chinese headers (label, 人数, 占比) for the UI."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(label, "string"),
            dg.TableColumn("人数", "int", description="users"),
            dg.TableColumn("占比", "float", description="share of the cohort's users"),
        ]
    )
    records = [
        dg.TableRecord(
            {label: name, "人数": count, "占比": round(count / total, 4) if total else 0.0}
        )
        for name, count in rows
    ]
    return dg.MetadataValue.table(records, schema)


def distribution_tables(numbers: CohortNumbers) -> dict[str, dg.TableMetadataValue]:
    """The report's distributions as tables: their keys are Chinese names, which cannot be
    metadata keys of their own (plotted per key), so each distribution is one table."""
    profiles, users = numbers.num_profiles, numbers.num_users
    segmented = sum(n for _, n in numbers.segments)
    return {
        "tag_distribution": distribution("用户标签", numbers.tags, profiles),
        "project_distribution": distribution("意向项目", numbers.projects, profiles),
        "concern_distribution": distribution("关注点", numbers.concerns, profiles),
        "intent_distribution": distribution("购买意向", numbers.intents, profiles),
        "segment_distribution": distribution("用户分群", numbers.segments, segmented),
        "rfm_distribution": distribution("RFM 分层", numbers.rfm, users),
        "spend_distribution": distribution(
            "消费金额", [(label, n) for label, _, n in numbers.spend], users
        ),
    }
