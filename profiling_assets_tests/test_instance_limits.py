"""The instance built from the repo's `dagster.yaml` (as every CLI command builds it) has the
pools, the one-run-per-partition limit and run monitoring in force, checked through the
instance's own slot claims and the run queue's own tag-limit counter."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._utils.concurrency import ConcurrencySlotStatus
from dagster._utils.tags import TagConcurrencyLimitsCounter

from profiling_assets.commands.instance import REPO_DAGSTER_YAML, open_instance
from profiling_assets.config import Settings
from profiling_assets.pools import GPU_POOL, LANCEDB_POOL


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    opened = open_instance(settings)
    # The instance really is the one the repo's file describes (seeded from it).
    home = settings.dagster_home.resolve()
    assert (home / "dagster.yaml").read_text() == REPO_DAGSTER_YAML.read_text()
    assert isinstance(opened.get_ref(), InstanceRef)
    yield opened
    opened.dispose()


@pytest.mark.parametrize("pool", [GPU_POOL, LANCEDB_POOL])
def test_each_pool_lets_one_step_in_at_a_time(instance: dg.DagsterInstance, pool: str) -> None:
    storage = instance.event_log_storage
    assert storage.get_concurrency_info(pool).slot_count == 1
    first = storage.claim_concurrency_slot(pool, "run-a", "user_profiles")
    second = storage.claim_concurrency_slot(pool, "run-b", "user_profiles")
    assert first.slot_status == ConcurrencySlotStatus.CLAIMED
    assert second.slot_status == ConcurrencySlotStatus.BLOCKED
    storage.free_concurrency_slots_for_run("run-a")
    again = storage.claim_concurrency_slot(pool, "run-b", "user_profiles")
    assert again.slot_status == ConcurrencySlotStatus.CLAIMED


def test_a_pool_without_its_own_limit_gets_the_files_default_of_one(
    instance: dg.DagsterInstance,
) -> None:
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1
    assert pools.pool_granularity.value == "op"


def _run(run_id: str, partition: str) -> dg.DagsterRun:
    return dg.DagsterRun(
        job_name="profile_job", run_id=run_id, tags={"dagster/partition": partition}
    )


def test_queued_runs_are_limited_to_one_per_partition(instance: dg.DagsterInstance) -> None:
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.max_concurrent_runs == 4
    # What the queue daemon does with the file's limits: a run of a partition that already
    # has a run in progress waits; another partition's run does not.
    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, [_run("a", "2025-01")])
    assert counter.is_blocked(_run("b", "2025-01"))
    assert not counter.is_blocked(_run("c", "2025-02"))


def test_run_monitoring_frees_the_slots_of_dead_runs(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
