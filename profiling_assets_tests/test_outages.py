"""Outages heal and failures are loud (issue 12): failure kinds in `profile_failures`, transport
failures asked again by the next run on their own, a step the server failed as a whole is
red (and retried by Dagster), settled keys per user and key, `demo` exits non-zero on a
failed check, and an unchanged run builds no model.

Real local HTTP servers (`OllamaLike`) behind the `user_profiles` asset, real DuckDB/LanceDB.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest

from profiling_assets.config import Settings
from profiling_assets.core.profiling.run import AHEAD_PER_SLOT
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import cohort_instance, ollama_settings

USERS = 10


@pytest.fixture
def data(evidence_copy: Callable[[int], tuple[Path, str]]) -> tuple[Path, str]:
    """A data dir of its own with everything up to `profile_evidence` done; its cohort."""
    return evidence_copy(USERS)


class Model:
    """/api/chat: a valid answer, unless `fail(call number, user)` says to fail (HTTP 500)
    or `bad(user)` to answer something that is not JSON. Counts the users it was asked."""

    def __init__(
        self,
        fail: Callable[[int, str], bool] = lambda n, u: False,
        bad: Callable[[str], bool] = lambda u: False,
    ) -> None:
        self.fail = fail
        self.bad = bad
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        user = corpus.prompt_user_id(body)
        with self._lock:
            self.asked.append(user)
            number = len(self.asked)
        if self.fail(number, user):
            raise RuntimeError("model server overloaded")  # OllamaLike answers HTTP 500
        if self.bad(user):
            return corpus.chat_reply(body, "{不是 JSON")
        return corpus.chat_reply(body, corpus.generic_profile_json())


def settings_for(data: Path, host: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "llm_timeout_s": 5.0,
        "llm_max_retries": 0,
        "llm_parallel": 1,
        "llm_step_retries": 0,
    }
    return ollama_settings(data, host, **(options | overrides))


def run_profiles(
    settings: Settings, cohort: str
) -> tuple[dg.ExecuteInProcessResult, dg.Definitions]:
    defs = build_definitions(settings)
    result = defs.resolve_job_def(PROFILE_JOB).execute_in_process(
        partition_key=cohort,
        instance=cohort_instance([cohort]),
        asset_selection=[dg.AssetKey("user_profiles")],
        raise_on_error=False,
    )
    return result, defs


def stored(data: Path, table: str) -> pl.DataFrame:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(f'SELECT * FROM "{table}"').pl()


# -- 5. failure kinds; outages heal without any flag -----------------------------------------


def test_an_outage_heals_on_the_next_run_without_any_flag(data: tuple[Path, str]) -> None:
    path, cohort = data
    # The server lists the model (same identity both runs) but every chat fails.
    broken = Model(fail=lambda number, user: True)
    with OllamaLike(models=("qwen-test",), chat_handler=broken) as server:
        down, _ = run_profiles(settings_for(path, server.url), cohort)
        model = Model()
        server.chat_handler = model
        healed, _ = run_profiles(settings_for(path, server.url), cohort)
    assert not down.success  # nobody answered: red, not a cohort of failed users
    failures = stored(path, "profile_failures")
    assert set(failures["kind"]) == {"transport"}
    # The outage stopped after one batch (4 users); users the look-ahead had already asked
    # meanwhile are recorded too (nothing asked is dropped); the others were never asked.
    assert 4 <= failures.height == len(broken.asked) <= 4 + AHEAD_PER_SLOT < USERS
    assert healed.success
    assert sorted(set(model.asked)) == sorted(stored(path, "users")["user_id"])
    assert len(model.asked) == USERS  # each once, PROFILING_RETRY_FAILED_PROFILES unset
    assert corpus.check_result(healed, "profile_failure_rate").passed


def test_one_users_transport_failure_is_asked_again_alone(data: tuple[Path, str]) -> None:
    path, cohort = data
    unlucky: list[str] = []

    def fail(number: int, user: str) -> bool:
        if number == 2:
            unlucky.append(user)
        return number == 2

    with OllamaLike(models=("qwen-test",), chat_handler=Model(fail=fail)) as server:
        first, _ = run_profiles(settings_for(path, server.url), cohort)
        again = Model()
        server.chat_handler = again
        second, _ = run_profiles(settings_for(path, server.url), cohort)
    assert first.success and second.success
    failures = stored(path, "profile_failures")
    assert failures.select("user_id", "kind").rows() == [(unlucky[0], "transport")]
    assert again.asked == unlucky
    assert corpus.materialized(second, "user_profiles")["num_unchanged"] == USERS - 1


def test_bad_answers_settle_and_a_new_key_is_settled_per_key(data: tuple[Path, str]) -> None:
    """Profiled at k1 (full schema), failed at k2 (compact: a new key, same model): a run with
    k2 unchanged asks nobody. Before, the one settled key per user was k1 and won."""
    path, cohort = data
    with OllamaLike(models=("qwen-test",), chat_handler=Model()) as server:
        full = settings_for(path, server.url, llm_schema="full")
        assert run_profiles(full, cohort)[0].success
        compact = settings_for(path, server.url, llm_schema="compact")
        bad = Model(bad=lambda user: True)
        server.chat_handler = bad
        at_k2, _ = run_profiles(compact, cohort)
        unchanged = Model()
        server.chat_handler = unchanged
        rerun, _ = run_profiles(compact, cohort)
    assert at_k2.success  # bad answers are per user: the run goes on, the check says it
    assert len(bad.asked) == USERS
    assert set(stored(path, "profile_failures")["kind"]) == {"bad_answer"}
    assert not corpus.check_result(at_k2, "profile_failure_rate").passed
    assert unchanged.asked == []  # 0 model calls
    assert corpus.materialized(rerun, "user_profiles")["num_unchanged"] == USERS


def test_a_step_the_server_failed_is_retried_by_dagster_and_heals(
    data: tuple[Path, str],
) -> None:
    """Batch 1 answered, batch 2 met an outage: the step stops there (batch 3 not asked),
    writes what it finished and fails; Dagster's retry policy runs it again, which asks only
    the users without a profile."""
    path, cohort = data
    model = Model(fail=lambda number, user: 5 <= number <= 8)
    with OllamaLike(models=("qwen-test",), chat_handler=model) as server:
        settings = settings_for(path, server.url, llm_step_retries=1, llm_step_retry_delay_s=0.1)
        result, _ = run_profiles(settings, cohort)
    assert result.success
    events = [e.event_type_value for e in result.all_events if e.step_key == "user_profiles"]
    assert "STEP_UP_FOR_RETRY" in events and "STEP_RESTARTED" in events
    failures = stored(path, "profile_failures")
    assert failures.height == 4 and set(failures["kind"]) == {"transport"}
    assert stored(path, "user_profiles").height == USERS
    assert len(model.asked) == 4 + 4 + (USERS - 4)  # batch 1, the outage, then the rest once
    assert len(set(model.asked[:4]) & set(model.asked[8:])) == 0


def test_failure_metadata_and_reasons_are_kept_when_the_step_fails(
    data: tuple[Path, str],
) -> None:
    path, cohort = data
    with OllamaLike(models=("qwen-test",), chat_handler=Model(), mode="error500") as server:
        result, _ = run_profiles(settings_for(path, server.url), cohort)
    description, meta = corpus.step_failure(result, "user_profiles")
    assert "模型服务不可用" in description and "HTTP 500" in description
    # The outage batch, and the users the look-ahead asked meanwhile (`AHEAD_PER_SLOT`).
    assert 4 <= meta["num_failed_transport"] <= 4 + AHEAD_PER_SLOT
    assert meta["num_profiles"] == 0
    assert meta["llm_schema"] == "full"


# -- 6. an unchanged run builds no model -------------------------------------------------


def test_an_unchanged_user_profiles_run_builds_no_embedder_or_llm(data: tuple[Path, str]) -> None:
    path, cohort = data
    with OllamaLike(models=("qwen-test",), chat_handler=Model()) as server:
        settings = settings_for(path, server.url)
        first, defs = run_profiles(settings, cohort)
        assert first.success
        assert defs.resources["models"].builds == {"embedder": 1, "llm": 1}
        assert defs.resources["models"].models_used == {"embedder", "llm"}
        second, defs = run_profiles(settings, cohort)
    assert second.success
    assert corpus.materialized(second, "user_profiles")["num_unchanged"] == USERS
    # No model handed to any step (label vectors from data/cache), none built again.
    assert defs.resources["models"].models_used == set()
    assert defs.resources["models"].builds == {}
    assert list((path / "cache" / "label_vectors").glob("*.npz"))


def test_label_vectors_are_the_same_from_the_cache(tmp_path: Path) -> None:
    import numpy as np

    from profiling_assets.core.spec import load_spec
    from profiling_assets.core.spec_rules import build_policy
    from profiling_assets.models.registry import model_identities
    from profiling_assets.resources import ModelHub, forget_loaded_models

    settings = Settings(data_dir=tmp_path)
    policy = build_policy(load_spec(""))
    fresh = ModelHub(settings=settings, policy=policy, identities=model_identities(settings))
    built = fresh.label_index
    # Another process (a later run) starts without the embedder this one built.
    forget_loaded_models()
    cached_hub = ModelHub(settings=settings, policy=policy, identities=model_identities(settings))
    cached = cached_hub.label_index
    assert cached_hub.builds == {}
    np.testing.assert_allclose(cached.matrix, built.matrix)
    np.testing.assert_allclose(cached.baseline, built.baseline)
    assert cached.embedder_identity == built.embedder_identity
    # The embedder still comes when something needs it (scoring text without vectors).
    assert cached.embedder is not None and cached_hub.builds == {"embedder": 1}


# -- 4. failures are loud: demo lists failed checks and exits non-zero -----------------------


def _demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Model) -> int:
    from profiling_assets.commands.cli import main

    with OllamaLike(models=("qwen-test",), chat_handler=model) as server:
        for name, value in {
            "DAGSTER_HOME": str(tmp_path / "home"),  # restored after: demo points it at data/
            "PROFILING_DATA_DIR": str(tmp_path / "data"),
            "PROFILING_LLM_BACKEND": "ollama",
            "PROFILING_LLM_MODEL": "qwen-test",
            "PROFILING_OLLAMA_HOST": server.url,
            "PROFILING_LLM_MAX_RETRIES": "0",
            "PROFILING_LLM_STEP_RETRIES": "0",
        }.items():
            monkeypatch.setenv(name, value)
        return main(["demo", "--users", "4", "--months", "1", "--seed", "3"])


def test_demo_lists_a_failed_check_per_cohort_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _demo(tmp_path, monkeypatch, Model(bad=lambda user: True))
    out = capsys.readouterr().out
    assert code == 1
    assert "检查未通过" in out
    assert "user_profiles:profile_failure_rate 未通过：failure_rate=1.00" in out
    assert "未通过 / failed" in out


def test_demo_with_every_check_passing_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _demo(tmp_path, monkeypatch, Model())
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✗" not in out and "未通过" not in out
