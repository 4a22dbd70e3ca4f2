"""The cohort schedule, and the backfill that rebuilds what a model upgrade changed."""

import time

import dagster as dg
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleCauseCategory,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.loader import DataLoader, LoadingContext
from dagster._core.utils import make_new_backfill_id

from profiling_assets.config import Settings
from profiling_assets.partitions import cohort_partitions

SCHEDULE_NAME = "cohort_profile_schedule"


def build_profile_schedule(
    settings: Settings, job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    """One run per cohort partition on the configured cron (default daily 02:00 Asia/Shanghai)."""

    @dg.schedule(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule=settings.schedule_cron,
        execution_timezone=settings.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.schedule_running
        else dg.DefaultScheduleStatus.STOPPED,
        description="Rebuilds every cohort's profiles; PROFILING_SCHEDULE_RUNNING=true starts it.",
    )
    def cohort_profile_schedule(context: dg.ScheduleEvaluationContext):
        cohorts = context.instance.get_dynamic_partitions(cohort_partitions.name or "cohort")
        if not cohorts:
            return dg.SkipReason("no cohort partitions yet: the cohort sensor adds them")
        tick = (
            context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
        )
        return [dg.RunRequest(run_key=f"{tick}|{c}", partition_key=c) for c in cohorts]

    return cohort_profile_schedule


class _InstanceLoadingContext(LoadingContext):
    """The batching context the stale-status resolver needs, outside a webserver request."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._loaders: dict = {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict[type, tuple[DataLoader, object]]:
        return self._loaders


def code_changed_assets(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[dg.AssetKey]:
    """Assets with a partition that needs a rebuild: materialized under another code version
    than today's (a new model identity or prompt version), or older than an upstream partition
    rebuilt since (e.g. by a backfill that stopped half-way).

    Dagster marks downstream of a code change stale only after the changed asset rebuilds,
    so callers add the downstream themselves (`backfill_selection`).
    """
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))
    cohorts = instance.get_dynamic_partitions(cohort_partitions.name or "cohort")
    latest = {
        key: instance.event_log_storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION
        )
        for key in graph.materializable_asset_keys
    }
    changed = set()
    for key in graph.materializable_asset_keys:
        parents = graph.get(key).parent_keys & set(latest)
        for cohort in cohorts:
            code_stale = any(
                c.category == StaleCauseCategory.CODE and c.key.asset_key == key
                for c in resolver.get_stale_causes(key, cohort)
            )
            own = latest[key].get(cohort)
            behind = own is not None and any(latest[p].get(cohort, 0) > own for p in parents)
            if code_stale or behind:
                changed.add(key)
                break
    return changed


def backfill_selection(defs: dg.Definitions, changed: set[dg.AssetKey]) -> list[dg.AssetKey]:
    if not changed:
        return []
    graph = defs.resolve_asset_graph()
    selected = dg.AssetSelection.assets(*changed).downstream().resolve(graph)
    return sorted(selected, key=lambda k: k.to_user_string())


def launch_backfill(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: list[dg.AssetKey],
    title: str,
) -> str:
    """Register a backfill over every cohort; the daemon (`dagster dev`) runs it."""
    cohorts = instance.get_dynamic_partitions(cohort_partitions.name or "cohort")
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=defs.resolve_asset_graph(),
        partition_names=cohorts,
        asset_selection=assets,
        backfill_timestamp=time.time(),
        tags={"profiling/reason": "model-upgrade"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description="Rebuild of the assets whose model identity or prompt version changed.",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id
