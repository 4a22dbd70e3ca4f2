"""`latest_profiles`: the view downstream teams read (SQL or `profiling-assets export`)."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import ownership, stored_table
from profiling_assets.models.registry import ModelIdentities
from profiling_assets.partitions import cohort_partitions
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import create_latest_profiles_view

LATEST_VIEW_CODE_VERSION = "latest-view-v1"


def build_export_assets(identities: ModelIdentities) -> list[dg.AssetsDefinition]:
    llm_id = str(identities.llm)

    @dg.asset(
        name=TABLES.latest_profiles.name,
        partitions_def=cohort_partitions,
        deps=["user_profiles"],
        group_name="profiles",
        kinds={"duckdb"},
        # The view selects the configured model's profiles: another model, another view.
        code_version=f"{LATEST_VIEW_CODE_VERSION}|{llm_id}",
        **ownership(TABLES.latest_profiles.name),
        description="DuckDB view: each user's newest profile from the configured LLM "
        "(user_profiles keeps every model's history); `profiling-assets export` reads it.",
    )
    def latest_profiles(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource
    ) -> dg.MaterializeResult:
        with duckdb.get_connection() as con:
            created = create_latest_profiles_view(con, llm_id)
        if not created:
            context.log.info("no user_profiles table yet: the view is created with it")
        return dg.MaterializeResult(
            metadata={
                "llm_identity": llm_id,
                **stored_table(duckdb, TABLES.latest_profiles, context.partition_key),
            }
        )

    return [latest_profiles]
