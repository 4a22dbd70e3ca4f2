"""Cohort partitions and the sensor that keeps them in step with the source."""

import dagster as dg

from profiling_assets.config import Settings
from profiling_assets.core.spec import load_spec
from profiling_assets.stores.names import is_valid_cohort
from profiling_assets.stores.source import list_cohorts, open_configured_source

cohort_partitions = dg.DynamicPartitionsDefinition(name="cohort")


def new_cohorts(settings: Settings, known: set[str]) -> tuple[list[str], list[str]]:
    """(cohorts to add, keys refused as unsafe): only valid keys ever become partitions."""
    spec = load_spec(settings.spec)
    if spec.identity.declared and not settings.identity_map_path.exists():
        return [], []  # cohorts come from stitched people: wait for the first `person_ids`
    with open_configured_source(settings, spec) as con:
        found = list_cohorts(con)
    refused = [c for c in found if not is_valid_cohort(c)]
    return [c for c in found if c not in known and is_valid_cohort(c)], refused


def build_cohort_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="cohort_sensor",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a `cohort` partition for every cohort found in the source.",
    )
    def cohort_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        known = set(context.instance.get_dynamic_partitions(cohort_partitions.name or "cohort"))
        added, refused = new_cohorts(settings, known)
        for key in refused:
            context.log.warning("cohort %r refused: not a safe partition key", key)
        return dg.SensorResult(
            dynamic_partitions_requests=[cohort_partitions.build_add_request(added)]
            if added
            else [],
            skip_reason=None if added else "no new cohorts",
        )

    return cohort_sensor
