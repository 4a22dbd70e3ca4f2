"""`person_ids`: identity stitching over the whole source, before the cohort partitions.

Defined only when the spec declares ids (`[identity.ids.<table>]`); without them every table's
`user_id` is the person, as before. The cohort runs read the stored map; a sensor re-stitches
when the source changes.
"""

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
from dagster_duckdb import DuckDBResource

from profiling_assets.assets.metadata import ownership
from profiling_assets.config import Settings
from profiling_assets.core.identity import identity_key
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.stores.identity import (
    read_person_map,
    stitch_source,
    write_map_file,
    write_person_map,
)
from profiling_assets.stores.source import open_source

IDENTITY_CODE_VERSION = "identity-v1"
PERSON_IDS = "person_ids"
STITCH_JOB = "stitch_job"


class IdentityDefinitions(NamedTuple):
    assets: list[dg.AssetsDefinition]
    jobs: list[Any]  # what define_asset_job returns (its type is not exported by Dagster)
    sensors: list[dg.SensorDefinition]


def build_identity_assets(settings: Settings, spec: ProfileSpec) -> IdentityDefinitions:
    """The `person_ids` asset with its over-merging check, its job and its source sensor;
    nothing when the spec declares no ids."""
    rules = spec.identity
    if not rules.declared:
        return IdentityDefinitions([], [], [])

    @dg.asset(
        name=PERSON_IDS,
        group_name="identity",
        kinds={"duckdb"},
        code_version=f"{IDENTITY_CODE_VERSION}|{spec.part_hash('columns')}",
        **ownership(PERSON_IDS),
        check_specs=[
            dg.AssetCheckSpec(
                "components_within_limit",
                asset=PERSON_IDS,
                description="No stitched component is larger than identity.max_component_size "
                "(larger ones are left unmerged and listed here).",
            )
        ],
        description="One person per connected set of ids (keyed hashes only): identity_nodes, "
        "persons, person_merges, identity_excluded.",
    )
    def person_ids(
        context: dg.AssetExecutionContext,
        duckdb: DuckDBResource,
    ):
        key = identity_key(settings.id_key.get_secret_value())
        with duckdb.get_connection() as con:
            previous_nodes, previous_persons = read_person_map(con)
        now = datetime.now(UTC).replace(tzinfo=None)
        with open_source(settings.source_path, spec.columns, settings.source_encoding) as source:
            result, stitched, rows = stitch_source(
                source, rules, key, previous_nodes, previous_persons, now
            )
        with duckdb.get_connection() as con:
            write_person_map(con, result, stitched)
        write_map_file(settings.identity_map_path, result.nodes)
        excluded = stitched.excluded.group_by("id_type").len().sort("id_type")
        context.log.info(
            "%d rows, %d ids, %d people, %d merges",
            rows,
            result.nodes.height,
            result.persons.height,
            result.merges.height,
        )
        yield dg.MaterializeResult(
            metadata={
                "num_rows_read": rows,
                "num_ids": result.nodes.height,
                "num_persons": result.persons.height,
                "num_merges": result.merges.height,
                "num_excluded_ids": stitched.excluded.height,
                "excluded_by_type": dg.MetadataValue.md(
                    "\n".join(f"- {t}：{n}" for t, n in excluded.iter_rows()) or "无"
                ),
                "dagster/row_count": result.persons.height,
                "dagster/column_schema": dg.TableSchema(
                    columns=[
                        dg.TableColumn(name, str(dtype))
                        for name, dtype in result.persons.schema.items()
                    ]
                ),
            }
        )
        listed = "\n".join(
            f"- {size} 个 id（{types}）"
            for _, size, types in stitched.oversize.head(20).iter_rows()
        )
        yield dg.AssetCheckResult(
            check_name="components_within_limit",
            passed=stitched.oversize.height == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "num_oversize": stitched.oversize.height,
                "max_component_size": rules.max_component_size,
                "oversize": dg.MetadataValue.md(listed or "无"),
            },
        )

    stitch_job = dg.define_asset_job(
        STITCH_JOB,
        selection=dg.AssetSelection.assets(PERSON_IDS),
        description="Stitch ids into people over the whole source.",
    )

    @dg.sensor(
        name="identity_sensor",
        job=stitch_job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Re-stitches people when the source changes (its files' sizes and times).",
    )
    def identity_sensor(context: dg.SensorEvaluationContext):
        fingerprint = source_fingerprint(settings.source_path)
        if fingerprint == context.cursor:
            return dg.SkipReason("source unchanged since the last stitching")
        context.update_cursor(fingerprint)
        return dg.RunRequest(run_key=fingerprint)

    return IdentityDefinitions([person_ids], [stitch_job], [identity_sensor])


def source_fingerprint(path: Path) -> str:
    """Size and modification time of every file of the source (a file or a folder)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = [f"{p}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in files if p.exists()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
