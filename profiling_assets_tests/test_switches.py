"""Model and setting switches, end to end as a user meets them: the whole chain materialized
once, then for each switch `profiling-assets backfill --stale --dry-run` (its own
dagster-webserver, staleness from Dagster's GraphQL API) must name exactly the assets whose
code version changed and exactly those plus everything downstream as the backfill.

Settings switch through the environment the code location loads with; the prompt version is
a constant in the code, so it switches the way a developer does it: an edited copy of the
package on PYTHONPATH (the webserver and its code server inherit the environment).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiling_assets.commands.cli import main
from profiling_assets.commands.instance import open_instance
from profiling_assets.config import Settings
from profiling_assets.core.profiling import prompt
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import (
    add_cohorts,
    ollama_env,
    profile_job,
    run_cohorts,
    write_sample,
)
from profiling_assets_tests.test_code_versions import SWITCHES

pytestmark = pytest.mark.slow

PACKAGE = Path(prompt.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """Every asset of every cohort materialized once on the CLI's own instance."""
    data = tmp_path_factory.mktemp("data")
    cohorts = write_sample(data / "source.duckdb", users=3, seed=11)
    with (
        OllamaLike(models=("qwen-a", "qwen-b"), chat_handler=corpus.profile_answer) as server,
        pytest.MonkeyPatch.context() as env,
    ):
        base = ollama_env(data, server.url, model="qwen-a")
        env.delenv("DAGSTER_HOME", raising=False)
        for name, value in base.items():
            env.setenv(name, value)
        settings = Settings()
        instance = add_cohorts(open_instance(settings), cohorts)
        results = run_cohorts(profile_job(settings), instance, cohorts)
        assert all(result.success for result in results.values())
        instance.dispose()
        yield data, base


def _dry_run(
    base: dict[str, str], switch: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[set[str], set[str]]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DAGSTER_HOME", raising=False)
        for name, value in {**base, **switch}.items():
            env.setenv(name, value)
        capsys.readouterr()
        assert main(["backfill", "--stale", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "已提交回填" not in out
    if "nothing changed" in out:
        return set(), set()
    changed = re.search(r"changed: (.*)\n", out)
    selection = re.search(r"backfill assets: (.*)\n", out)
    assert changed and selection, out
    return set(changed.group(1).split(", ")), set(selection.group(1).split(", "))


def _edited_package(root: Path) -> Path:
    """A copy of the package with the next prompt version, as a developer bumps it."""
    target = root / "profiling_assets"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    source = target / "core" / "profiling" / "prompt.py"
    old = f'PROMPT_VERSION = "{prompt.PROMPT_VERSION}"'
    text = source.read_text(encoding="utf-8")
    assert old in text
    source.write_text(text.replace(old, 'PROMPT_VERSION = "test-next"'), encoding="utf-8")
    return root


def test_unchanged_settings_select_nothing(chain, capsys) -> None:
    _, base = chain
    assert _dry_run(base, {}, capsys) == (set(), set())


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_marks_exactly_its_assets_and_backfills_them_and_below(
    chain,
    name: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, base = chain
    switch, expected_changed, expected_selection = SWITCHES[name]
    if name == "prompt_version":
        switch = {"PYTHONPATH": str(_edited_package(tmp_path))}
        # `python -m` puts the working directory first on sys.path: run from elsewhere, so
        # the code server imports the edited copy, not the checkout's package.
        monkeypatch.chdir(tmp_path)
    changed, selection = _dry_run(base, switch, capsys)
    assert changed == expected_changed
    assert selection == expected_selection
