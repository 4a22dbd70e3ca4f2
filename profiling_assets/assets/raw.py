"""Raw source tables of a cohort, validated and masked; every bad row lands in `rejected_rows`."""

from datetime import date

import dagster as dg
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.identity import PERSON_IDS
from profiling_assets.assets.metadata import ownership, stored_table
from profiling_assets.config import Settings
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.intake import all_rejected, validate_cohort
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.partitions import cohort_partitions
from profiling_assets.stores.source import (
    UNASSIGNED_COHORT,
    CohortTables,
    malformed_lines,
    open_configured_source,
)
from profiling_assets.stores.tables import TABLES as STORED
from profiling_assets.stores.warehouse import replace_partition

# v2: CSV read line by line (any line ending, UTF-8/GB18030), Excel, Chinese dates and
# amounts, personal data masked at intake, provenance columns in rejected_rows.
RAW_CODE_VERSION = "raw-v2"
TABLES = tuple(SOURCE_TABLES)


def build_raw_assets(settings: Settings, spec: ProfileSpec) -> dg.AssetsDefinition:
    """The `source_tables` multi-asset; the spec's column mapping and identity rules are part
    of its code version, so a changed mapping makes every cohort's validated tables stale.
    With declared ids every table is keyed on the stitched person (`person_ids` upstream)."""
    code_version = f"{RAW_CODE_VERSION}|{spec.part_hash('columns')}"
    upstream = [PERSON_IDS] if spec.identity.declared else []
    raw_specs = [
        dg.AssetSpec(
            table,
            group_name="raw",
            kinds={"duckdb"},
            description=f"Validated `{table}` rows of the cohort (personal data masked).",
            code_version=code_version,
            deps=upstream,
            **ownership(table),
        )
        for table in (*TABLES, STORED.rejected_rows.name)
    ]
    check_specs = [
        dg.AssetCheckSpec(
            "rows_accounted_for",
            asset=table,
            description="Rows read = rows accepted + rejected (+ users rows folded into their "
            "stitched person), counted in the warehouse.",
        )
        for table in TABLES
    ]

    @dg.multi_asset(
        specs=raw_specs,
        check_specs=check_specs,
        partitions_def=cohort_partitions,
        name="source_tables",
    )
    def source_tables(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ):
        cohort = context.partition_key
        unassigned = cohort == UNASSIGNED_COHORT
        with open_configured_source(settings, spec) as source:
            malformed = {t: malformed_lines(source, t) for t in TABLES} if unassigned else None
            raw = CohortTables(source, cohort, with_provenance=True)
            results = validate_cohort(
                raw, cohort, date.today(), unassigned, malformed, spec.intake.max_amount
            )
        rejected = all_rejected(results)
        with duckdb.get_connection() as con:
            for table, result in results.items():
                replace_partition(con, STORED.named(table), cohort, result.accepted)
            replace_partition(con, STORED.rejected_rows, cohort, rejected)
            stored = {
                table: con.execute(
                    f'SELECT count(*) FROM "{STORED.rejected_rows.name}" '
                    "WHERE cohort = ? AND table_name = ?",
                    [cohort, table],
                ).fetchall()[0][0]
                for table in TABLES
            }
        for table, result in results.items():
            accepted, rejected_n = result.accepted.height, stored[table]
            yield dg.MaterializeResult(
                asset_key=table,
                metadata={
                    "num_read": result.num_read,
                    "num_accepted": accepted,
                    "num_rejected": rejected_n,
                    "num_nulled_optional": result.num_nulled,
                    "num_truncated": result.num_truncated,
                    "num_merged": result.num_merged,
                    **stored_table(duckdb, STORED.named(table), cohort),
                },
            )
            yield dg.AssetCheckResult(
                asset_key=table,
                check_name="rows_accounted_for",
                passed=result.num_read == accepted + rejected_n + result.num_merged,
                metadata={
                    "read": result.num_read,
                    "accepted": accepted,
                    "rejected": rejected_n,
                    "merged": result.num_merged,
                },
            )
        reasons = rejected.group_by("table_name", "reason").len().sort("len", descending=True)
        preview = "\n".join(f"- {r[0]}：{r[1]}（{r[2]} 行）" for r in reasons.iter_rows())
        yield dg.MaterializeResult(
            asset_key="rejected_rows",
            metadata={
                "num_rejected": rejected.height,
                "reasons": dg.MetadataValue.md(preview or "无"),
                **stored_table(duckdb, STORED.rejected_rows, cohort),
            },
        )

    return source_tables
