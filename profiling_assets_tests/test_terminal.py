"""What people see: `demo` fits on one screen with a progress line per cohort (Dagster's event
log goes to the instance and a file), and profile files are readable Chinese.

The real pipeline on the sample data; the LLM is an Ollama-speaking local server
(`OllamaLike`) so the test does not wait on a real model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from profiling_assets.commands.cli import main
from profiling_assets.stores.files import readable_json, replace_cohort_files
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import ollama_env

ONE_SCREEN = 40  # lines


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """`profiling-assets demo` on the default sample size, terminal output captured at the
    file-descriptor level (what a person would see, C libraries' writes included)."""
    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    with (
        pytest.MonkeyPatch.context() as env,
        OllamaLike(models=("qwen-test",), chat_handler=corpus.profile_answer) as server,
    ):
        env.delenv("DAGSTER_HOME", raising=False)
        for name, value in ollama_env(data, server.url).items():
            env.setenv(name, value)
        yield data, server


def test_demo_fits_on_one_screen_with_a_line_per_cohort(
    demo_run, capfd: pytest.CaptureFixture[str]
) -> None:
    data, _ = demo_run
    assert main(["demo"]) == 0
    out, err = capfd.readouterr()
    lines = (out + err).splitlines()
    assert len(lines) <= ONE_SCREEN, "\n".join(lines)
    assert not [line for line in lines if re.search(r" - (DEBUG|INFO) - ", line)]
    cohorts = out.split("批次（cohort 分区）：")[1].splitlines()[0].split(", ")
    assert len(cohorts) >= 3
    for cohort in cohorts:
        progress = [line for line in lines if f"批次 {cohort} " in line]
        assert len(progress) == 1, progress
        assert "成功" in progress[0]
        steps = re.search(r"(\d+)/(\d+)", progress[0])
        assert steps and steps[1] == steps[2]  # every step of the run counted
    log = (data / "logs" / "dagster-events.log").read_text(encoding="utf-8")
    assert log.count("RUN_SUCCESS") + log.count("Finished execution of run") >= len(cohorts)
    assert "dagster-events.log" in out


def test_profile_files_are_readable_utf8_chinese(demo_run) -> None:
    data, _ = demo_run
    files = sorted((data / "profiles").rglob("*.json"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "\\u" not in text
        assert re.search(r"[\u4e00-\u9fff]", text)
        assert text.startswith("{\n  ")  # indented, one field a line
        json.loads(text)


def test_json_files_are_rewritten_readable_whatever_the_serializer(tmp_path: Path) -> None:
    escaped = json.dumps({"tags": {"value": ["颜值焦虑"]}})  # ensure_ascii=True by default
    assert "\\u" in escaped
    replace_cohort_files(tmp_path, "2025-01", [("U1", escaped)], ".json")
    text = (tmp_path / "2025-01" / "U1.json").read_text(encoding="utf-8")
    assert "颜值焦虑" in text and "\\u" not in text
    assert json.loads(text) == json.loads(escaped)
    assert readable_json(escaped) == text
