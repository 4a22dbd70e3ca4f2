"""The cohort schedule: one run per cohort partition on the configured cron."""

from __future__ import annotations

import dagster as dg

from profiling_assets.config import Settings
from profiling_assets.partitions import cohort_partitions

SCHEDULE_NAME = "cohort_profile_schedule"


def build_profile_schedule(settings: Settings, job_name: str) -> dg.ScheduleDefinition:
    """One run per cohort partition on the configured cron (default daily 02:00 Asia/Shanghai).
    The job goes by name: the type `define_asset_job` returns is not exported by Dagster."""

    @dg.schedule(
        name=SCHEDULE_NAME,
        job_name=job_name,
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
