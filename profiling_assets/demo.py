"""The main job: sample data if absent → cohorts → every asset of every cohort → summary."""

from __future__ import annotations

import time
from typing import NamedTuple

import duckdb

from profiling_assets.config import Settings
from profiling_assets.instance import open_instance
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.stores.names import safe_table
from profiling_assets.stores.source import UNASSIGNED_COHORT, list_cohorts, open_source
from profiling_assets.stores.warehouse import table_exists

SUMMARY_TABLES = (
    "users",
    "rejected_rows",
    "user_documents",
    "document_chunks",
    "profile_evidence",
    "user_profiles",
    "profile_failures",
    "user_segments",
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


class CohortRun(NamedTuple):
    cohort: str
    success: bool
    seconds: float
    run_id: str


def materialize_cohorts(settings: Settings, cohorts: list[str]) -> list[CohortRun]:
    """One Dagster run per cohort on the persistent instance, so the UI shows them."""
    instance = open_instance(settings)
    known = set(instance.get_dynamic_partitions("cohort"))
    instance.add_dynamic_partitions("cohort", [c for c in cohorts if c not in known])
    job = build_definitions(settings).resolve_job_def(PROFILE_JOB)
    outcomes = []
    # `unassigned` (rejections only) first, so each asset's latest materialization in the UI
    # is a real cohort rather than an empty one.
    for cohort in sorted(cohorts, key=lambda c: (c != UNASSIGNED_COHORT, c)):
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=cohort, instance=instance, raise_on_error=False
        )
        outcomes.append(
            CohortRun(cohort, result.success, time.perf_counter() - started, result.run_id)
        )
        print(
            f"  批次 {cohort}: {'成功' if result.success else '失败'}"
            f"（{outcomes[-1].seconds:.1f} 秒）"
        )
    return outcomes


def table_counts(settings: Settings) -> dict[str, int]:
    counts = {}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        for table in SUMMARY_TABLES:
            if table_exists(con, table):
                query = f'SELECT count(*) FROM "{safe_table(table)}"'
                counts[table] = con.execute(query).fetchall()[0][0]
    return counts


def run_demo(settings: Settings, users: int, seed: int, months: int) -> int:
    started = time.perf_counter()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if ensure_sample_source(settings, users, seed, months):
        print(f"已生成样例数据：{settings.source_path}（{users} 个用户，seed={seed}）")
    with open_source(settings.source_path) as con:
        cohorts = list_cohorts(con)
    print(f"批次（cohort 分区）：{', '.join(cohorts)}")
    outcomes = materialize_cohorts(settings, cohorts)
    counts = table_counts(settings)
    print("\n汇总 / Summary")
    for table, n in counts.items():
        print(f"  {table}: {n}")
    print(f"  用时 {time.perf_counter() - started:.1f} 秒")
    print(
        "\n在 Dagster UI 中查看 / open the UI:\n"
        f"  DAGSTER_HOME={settings.dagster_home.resolve()} dagster dev -w workspace.yaml"
    )
    return 0 if all(run.success for run in outcomes) else 1
