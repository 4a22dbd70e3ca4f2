"""Model upgrade → exactly the affected assets change → backfill over every cohort; schedule.

Staleness and backfills go through a real `dagster-webserver` (its public GraphQL API) on
the instance the runs were materialized on, started with the settings under test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import dagster as dg
import httpx
import pytest

from profiling_assets.automation import SCHEDULE_NAME
from profiling_assets.commands.backfill import (
    WHOLE,
    AssetState,
    backfill_selection,
    code_changed_assets,
    fetch_asset_states,
    launch_backfill,
)
from profiling_assets.commands.cli import main
from profiling_assets.commands.instance import dagster_home, open_instance
from profiling_assets.commands.webserver import DagsterGraphQL, running_webserver
from profiling_assets.config import Settings
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets_tests.sample_runs import (
    UP_TO_EVIDENCE,
    add_cohorts,
    profile_job,
    run_cohorts,
    write_sample,
)

EMBEDDER_UPGRADE = {
    "PROFILING_EMBEDDER_BACKEND": "flagembedding",
    "PROFILING_EMBEDDER_MODEL": "BAAI/bge-m3",
}
_BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { assetSelection { path } partitionNames tags { key value } }
  }
}
"""


def _keys(keys) -> set[str]:
    return {k.to_user_string() for k in keys}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory):
    """Source → evidence of every cohort on a persistent instance (no DAGSTER_HOME set, so
    ours under data/), with PROFILING_DATA_DIR pointing the code location at it."""
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data)
    cohorts = write_sample(settings.source_path, users=3, seed=11, months=2)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DAGSTER_HOME", raising=False)
        env.setenv("PROFILING_DATA_DIR", str(data))
        instance = add_cohorts(open_instance(settings), cohorts)
        results = run_cohorts(profile_job(settings), instance, cohorts, UP_TO_EVIDENCE)
        assert all(result.success for result in results.values())
        yield settings, instance, cohorts
        instance.dispose()


@contextmanager
def _webserver(settings: Settings, **env: str) -> Iterator[DagsterGraphQL]:
    """A real webserver on the test instance whose code location sees `env` on top."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        log = settings.data_dir / "logs" / "webserver.log"
        with running_webserver(dagster_home(settings), log) as client:
            yield client


@pytest.fixture(scope="module")
def unchanged(materialized) -> Iterator[DagsterGraphQL]:
    settings, _, _ = materialized
    with _webserver(settings) as client:
        yield client


def test_unchanged_config_changes_nothing(materialized, unchanged: DagsterGraphQL) -> None:
    _, _, cohorts = materialized
    states, found = fetch_asset_states(unchanged)
    assert found == sorted(cohorts)
    assert code_changed_assets(states) == set()
    assert backfill_selection(states, set()) == []


def test_embedder_upgrade_marks_vectors_and_evidence_and_backfills_everything_below(
    materialized,
) -> None:
    settings, _, cohorts = materialized
    with _webserver(settings, **EMBEDDER_UPGRADE) as client:
        states, found = fetch_asset_states(client)
        changed = code_changed_assets(states)
        assert _keys(changed) == {"chunk_embeddings", "profile_evidence"}
        selection = backfill_selection(states, changed)
        assert _keys(selection) == {
            "chunk_embeddings",
            "profile_evidence",
            "user_profiles",
            "user_segments",
            "cohort_report",
            "profile_quality",
            "latest_profiles",  # the view over user_profiles
        }
        backfill_id = launch_backfill(client, selection, found, title="test upgrade")
        backfill = client.execute(_BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill"
    assert {"/".join(k["path"]) for k in backfill["assetSelection"]} == _keys(selection)
    assert set(backfill["partitionNames"]) == set(cohorts)
    assert {"key": "profiling/reason", "value": "model-upgrade"} in backfill["tags"]


def test_retrieval_setting_marks_only_evidence(materialized) -> None:
    settings, _, _ = materialized
    with _webserver(settings, PROFILING_EVIDENCE_TOP_N="3") as client:
        states, _ = fetch_asset_states(client)
    assert _keys(code_changed_assets(states)) == {"profile_evidence"}


def test_cli_starts_its_own_webserver_and_stops_it(
    materialized, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`backfill --stale` end to end with no webserver running: it starts one on a free port,
    asks it, and leaves nothing behind (no child process, DAGSTER_HOME as it was)."""
    settings, _, _ = materialized
    monkeypatch.setenv("PROFILING_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name, value in EMBEDDER_UPGRADE.items():
        monkeypatch.setenv(name, value)
    assert main(["backfill", "--stale", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "changed: chunk_embeddings, profile_evidence\n" in out
    assert "已提交回填" not in out  # a dry run registers nothing
    assert "DAGSTER_HOME" not in os.environ
    log = (settings.data_dir / "logs" / "webserver.log").read_text(encoding="utf-8")
    url = re.findall(r"Serving dagster-webserver on (http://\S+)", log)[-1]
    with pytest.raises(httpx.ConnectError):  # stopped after the command
        httpx.get(f"{url}/server_info", timeout=5)


def test_cli_launches_the_backfill_on_a_running_webserver(
    materialized, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _, _ = materialized
    with _webserver(settings, PROFILING_EVIDENCE_TOP_N="3") as client:
        assert main(["backfill", "--stale", "--url", client.url]) == 0
    out = capsys.readouterr().out
    assert "changed: profile_evidence\n" in out
    assert "已提交回填" in out


def test_cli_names_an_unreachable_webserver_in_one_line(capsys) -> None:
    from profiling_assets.commands.webserver import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["backfill", "--stale", "--dry-run", "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreachable" in err and len(err.splitlines()) == 1


def test_schedule_requests_one_run_per_cohort(materialized) -> None:
    settings, instance, cohorts = materialized
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Asia/Shanghai"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 26, 18, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    requests = schedule.evaluate_tick(context).run_requests or []
    assert sorted(r.partition_key for r in requests) == sorted(cohorts)
    assert len({r.run_key for r in requests}) == len(cohorts)


def test_schedule_state_is_configurable() -> None:
    running = Settings(schedule_running=True, schedule_cron="30 3 * * *")
    schedule = build_definitions(running).resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "30 3 * * *"


def test_a_half_finished_rebuild_is_still_found(materialized, unchanged) -> None:
    """Runs last: it rebuilds one upstream partition, leaving everything below it stale (as a
    backfill stopped half-way does); `backfill --stale` must still find what is left."""
    settings, instance, cohorts = materialized
    defs = build_definitions(settings)
    job = defs.resolve_job_def(PROFILE_JOB)
    result = job.execute_in_process(
        partition_key=cohorts[0], instance=instance, asset_selection=[dg.AssetKey("user_documents")]
    )
    assert result.success
    states, _ = fetch_asset_states(unchanged)  # the webserver reads the instance live
    changed = code_changed_assets(states)
    assert _keys(changed) == {"document_chunks"}
    selection = _keys(backfill_selection(states, changed))
    assert {"document_chunks", "chunk_embeddings", "profile_evidence"} <= selection
    assert "user_documents" not in selection


def _state(key: str, parents=(), children=(), **kwargs) -> AssetState:
    return AssetState(key, frozenset(parents), frozenset(children), **kwargs)


@pytest.mark.parametrize(
    ("person_ids_ms", "expected"),
    [(50.0, set()), (150.0, {"users"})],  # rebuilt after the cohort's users: behind
)
def test_an_unpartitioned_parent_rebuilt_later_marks_its_cohort_children(
    person_ids_ms: float, expected: set[str]
) -> None:
    """Plain data as the webserver answers it: the stitching asset is unpartitioned."""
    states = [
        _state("person_ids", children=["users"], partitioned=False,
               materialized_ms={WHOLE: person_ids_ms}),
        _state("users", parents=["person_ids"], children=["user_documents"],
               materialized_ms={"2025-01": 100.0, "2025-02": 200.0}),
        _state("user_documents", parents=["users"],
               materialized_ms={"2025-01": 300.0, "2025-02": 300.0}),
    ]  # fmt: skip
    changed = code_changed_assets(states)
    assert _keys(changed) == expected
    if expected:
        assert _keys(backfill_selection(states, changed)) == {"users", "user_documents"}


def test_a_code_change_in_any_cohort_selects_the_asset_and_its_downstream() -> None:
    states = [
        _state("a", children=["b"], code_changed=frozenset({"2025-02"})),
        _state("b", parents=["a"], children=["c"]),
        _state("c", parents=["b"]),
        _state("other"),
    ]
    changed = code_changed_assets(states)
    assert _keys(changed) == {"a"}
    assert [k.to_user_string() for k in backfill_selection(states, changed)] == ["a", "b", "c"]
