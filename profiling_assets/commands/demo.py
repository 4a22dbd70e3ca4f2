"""The main job: sample data if absent → cohorts → every asset of every cohort → summary."""

from __future__ import annotations

import time
from typing import NamedTuple

import dagster as dg

from profiling_assets.assets.identity import STITCH_JOB
from profiling_assets.commands.instance import (
    dagster_home,
    logs_dir,
    open_instance,
    user_dagster_home,
)
from profiling_assets.commands.run_progress import QUIET_CONSOLE, CohortLines, append_event_log
from profiling_assets.config import Settings
from profiling_assets.core.identity import IdentityKeyError, identity_key
from profiling_assets.core.spec import load_spec
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.stores.source import UNASSIGNED_COHORT, list_cohorts, open_configured_source
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import table_exists
from profiling_assets.stores.warehouse_access import open_warehouse

EVENT_LOG_FILE = "dagster-events.log"
SUMMARY_TABLES = (
    TABLES.users,
    TABLES.rejected_rows,
    TABLES.documents,
    TABLES.chunks,
    TABLES.evidence,
    TABLES.profiles,
    TABLES.failures,
    TABLES.segments,
)


def ensure_sample_source(settings: Settings, users: int, seed: int, months: int) -> bool:
    """Generate the sample source unless one is configured or already there."""
    if settings.source_path.exists():
        return False
    from profiling_assets.synth.generate import write_source
    from profiling_assets.synth.sample import sample_tables

    settings.source_path.parent.mkdir(parents=True, exist_ok=True)
    write_source(settings.source_path, sample_tables(settings.spec, users, seed, months))
    return True


# Check metadata shown beside a failed check, when it has them (numbers say how far off).
_CHECK_FIGURES = ("failure_rate", "max_failure_rate", "num_failed", "num_tried", "num_transport")


class CohortRun(NamedTuple):
    cohort: str
    success: bool
    seconds: float
    run_id: str
    failed_checks: tuple[str, ...] = ()  # one line per check that did not pass
    failed_steps: tuple[str, ...] = ()  # one line per step that failed

    @property
    def ok(self) -> bool:
        return self.success and not self.failed_checks


def failed_checks(result: dg.ExecuteInProcessResult) -> tuple[str, ...]:
    """Every check of the run that did not pass at ERROR severity (a check's own failure
    does not fail a run unless it is blocking, so the run's success alone hides it)."""
    lines = []
    for check in result.get_asset_check_evaluations():
        if check.passed or check.severity != dg.AssetCheckSeverity.ERROR:
            continue
        figures = "，".join(
            f"{name}={_figure(check.metadata[name].value)}"
            for name in _CHECK_FIGURES
            if name in check.metadata
        )
        kind = "阻断检查" if check.blocking else "检查"
        name = f"{check.asset_key.to_user_string()}:{check.check_name}"
        lines.append(f"{kind} {name} 未通过" + (f"：{figures}" if figures else ""))
    return tuple(lines)


def failed_steps(result: dg.ExecuteInProcessResult) -> tuple[str, ...]:
    """The steps that failed, each with the first line of its reason (a retried step once)."""
    reasons: dict[str, str] = {}
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE" or event.step_key is None:
            continue
        data = event.event_specific_data
        failure = getattr(data, "user_failure_data", None)
        error = getattr(data, "error", None)
        text = (failure.description if failure else None) or (error.message if error else None)
        lines = (text or "").strip().splitlines()
        reasons[event.step_key] = lines[0][:300] if lines else ""
    return tuple(f"步骤 {step} 失败：{reason}" for step, reason in reasons.items())


def _figure(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


class StitchingFailed(RuntimeError):
    """The `person_ids` run failed; the message carries its step's reason."""


def stitch_and_list_cohorts(settings: Settings) -> list[str]:
    """The source's cohorts; when the spec declares ids, people are stitched first (one
    `person_ids` run on the persistent instance), since cohorts are those of people.
    `IdentityKeyError` before any run when the key is missing; `StitchingFailed` after."""
    spec = load_spec(settings.spec)
    if spec.identity.declared:
        identity_key(settings.id_key.get_secret_value())
        job = build_definitions(settings, spec).resolve_job_def(STITCH_JOB)
        result = job.execute_in_process(
            instance=open_instance(settings), raise_on_error=False, run_config=QUIET_CONSOLE
        )
        if not result.success:
            raise StitchingFailed(
                "身份拼接失败 / identity stitching failed: " + "; ".join(failed_steps(result))
            )
    with open_configured_source(settings, spec) as con:
        return list_cohorts(con)


def materialize_cohorts(settings: Settings, cohorts: list[str]) -> list[CohortRun]:
    """One Dagster run per cohort on the persistent instance, so the UI shows them."""
    instance = open_instance(settings)
    known = set(instance.get_dynamic_partitions("cohort"))
    instance.add_dynamic_partitions("cohort", [c for c in cohorts if c not in known])
    job = build_definitions(settings).resolve_job_def(PROFILE_JOB)
    outcomes = []
    # Dagster's event log: in the instance (the UI) and this file, not on the terminal.
    event_log = logs_dir(settings) / EVENT_LOG_FILE
    with CohortLines(len(job.graph.nodes)) as lines:
        # `unassigned` (rejections only) first, so each asset's latest materialization in
        # the UI is a real cohort rather than an empty one.
        for cohort in sorted(cohorts, key=lambda c: (c != UNASSIGNED_COHORT, c)):
            started = time.perf_counter()
            result = lines.run(job, instance, cohort)
            append_event_log(instance, result.run_id, event_log)
            run = CohortRun(
                cohort,
                result.success,
                time.perf_counter() - started,
                result.run_id,
                failed_checks(result),
                failed_steps(result),
            )
            outcomes.append(run)
            verdict = "成功" if run.ok else ("失败" if not run.success else "检查未通过")
            lines.finish(cohort, f"{verdict}（{run.seconds:.1f} 秒）")
    return outcomes  # what failed is listed once, under the summary


def table_counts(settings: Settings) -> dict[str, int]:
    counts = {}
    with open_warehouse(settings) as con:
        for table in SUMMARY_TABLES:
            if table_exists(con, table):
                query = f'SELECT count(*) FROM "{table.name}"'
                counts[table.name] = con.execute(query).fetchall()[0][0]
    return counts


def ui_command(settings: Settings) -> str:
    """`dagster dev` on the instance the demo used (the user's own needs no prefix)."""
    prefix = "" if user_dagster_home() else f"DAGSTER_HOME={dagster_home(settings)} "
    return f"{prefix}dagster dev -w workspace.yaml"


def run_demo(settings: Settings, users: int, seed: int, months: int) -> int:
    started = time.perf_counter()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if ensure_sample_source(settings, users, seed, months):
        print(f"已生成样例数据：{settings.source_path}（{users} 个用户，seed={seed}）")
    try:
        cohorts = stitch_and_list_cohorts(settings)
    except (IdentityKeyError, StitchingFailed) as error:
        print(f"✗ {error}")
        return 1
    print(f"批次（cohort 分区）：{', '.join(cohorts)}")
    outcomes = materialize_cohorts(settings, cohorts)
    counts = table_counts(settings)
    print("\n汇总 / Summary")
    for table, n in counts.items():
        print(f"  {table}: {n}")
    print(f"  用时 {time.perf_counter() - started:.1f} 秒")
    bad = [run for run in outcomes if not run.ok]
    if bad:
        print(f"\n未通过 / failed: {len(bad)} 个批次（{', '.join(r.cohort for r in bad)}）")
        for run in bad:
            for line in (*run.failed_steps, *run.failed_checks):
                print(f"  ✗ {run.cohort}：{line}")
    print(f"  Dagster 事件日志 / event log: {logs_dir(settings) / EVENT_LOG_FILE}")
    print("\n在 Dagster UI 中查看 / open the UI:\n  " + ui_command(settings))
    # A failed check is a failed demo: a script (or CI) must see it without reading the log.
    return 0 if not bad else 1
