"""Dagster conventions: public API only, the user's DAGSTER_HOME respected, `.env` read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "profiling_assets"
# `dagster._core…`, `dagster_graphql._…`, `from dagster import _x`: all private.
_PRIVATE = re.compile(r"\bdagster\w*\._|from\s+dagster\w*\s+import\s+[^\n]*\b_\w")


def test_no_module_imports_a_private_dagster_module() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _PRIVATE.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "line",
    [
        "from dagster._core.events import DagsterEventType",
        "import dagster._core.loader",
        "from dagster_graphql._utils import x",
        "from dagster import _check",
    ],
)
def test_the_private_import_pattern_catches(line: str) -> None:
    assert _PRIVATE.search(line)


# --- the user's DAGSTER_HOME ---------------------------------------------------------------
USER_YAML = "# my own instance\ntelemetry:\n  enabled: false\n"


def test_a_users_dagster_home_survives_every_command_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dagster as dg

    from profiling_assets.commands.cli import main
    from profiling_assets_tests import bad_inputs as corpus
    from profiling_assets_tests.ollama_like import OllamaLike
    from profiling_assets_tests.sample_runs import ollama_env

    home = tmp_path / "my_dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(USER_YAML, encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"

    with OllamaLike(models=("qwen-test",), chat_handler=corpus.profile_answer) as server:
        for name, value in ollama_env(data, server.url).items():
            monkeypatch.setenv(name, value)
        assert main(["generate", "--users", "4", "--months", "1", "--seed", "3"]) == 0
        assert main(["spec", "check", "clinic"]) == 0
        assert main(["check-source", str(data / "source.duckdb")]) == 0
        main(["doctor"])  # its verdict depends on the machine; only its effect counts here
        assert main(["demo", "--users", "4", "--months", "1", "--seed", "3"]) == 0
        assert main(["backfill", "--stale", "--dry-run"]) == 0
        main(["diff", "u0001"])
    out = capsys.readouterr().out
    assert (home / "dagster.yaml").read_text(encoding="utf-8") == USER_YAML
    assert os.environ["DAGSTER_HOME"] == str(home)
    assert not (data / "dagster_home").exists()  # ours is made only when none is set
    assert f"DAGSTER_HOME={data}" not in out
    instance = dg.DagsterInstance.get()  # the runs landed in the user's instance
    try:
        assert instance.get_runs_count() >= 1
    finally:
        instance.dispose()


def test_without_dagster_home_ours_is_seeded_once_and_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profiling_assets.commands.instance import REPO_DAGSTER_YAML, open_instance
    from profiling_assets.config import Settings

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings(data_dir=tmp_path)
    open_instance(settings).dispose()
    ours = settings.dagster_home / "dagster.yaml"
    assert ours.read_bytes() == REPO_DAGSTER_YAML.read_bytes()
    ours.write_text(USER_YAML, encoding="utf-8")  # edited by hand afterwards
    open_instance(settings).dispose()
    assert ours.read_text(encoding="utf-8") == USER_YAML
    assert "DAGSTER_HOME" not in os.environ  # pointed at ours for the call only


# --- .env and the dg CLI --------------------------------------------------------------------
def test_settings_read_dotenv_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profiling_assets.config import Settings

    (tmp_path / ".env").write_text(
        "PROFILING_CHUNK_SIZE=500\nPROFILING_EVIDENCE_TOP_N=3\n"
        "DAGSTER_HOME=/elsewhere\nOPENAI_API_KEY=x\n",  # other tools' lines are not ours
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROFILING_CHUNK_SIZE", raising=False)
    monkeypatch.setenv("PROFILING_EVIDENCE_TOP_N", "5")
    settings = Settings()
    assert settings.chunk_size == 500
    assert settings.evidence_top_n == 5


DG_CLI = Path(sys.executable).with_name("dg")


@pytest.mark.skipif(not DG_CLI.exists(), reason="dagster-dg-cli not installed")
def test_dg_knows_the_project_and_loads_its_definitions() -> None:
    dg_cli = DG_CLI
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    done = subprocess.run(
        [str(dg_cli), "check", "defs"],
        cwd=PACKAGE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
