"""A server that is briefly down must not change the Ollama identity (and so code_version)."""

from __future__ import annotations

from pathlib import Path

from profiling_assets.config import Settings
from profiling_assets.models.registry import llm_identity
from profiling_assets_tests.ollama_like import OllamaLike, fake_digest


def test_identity_survives_an_unreachable_server(tmp_path: Path) -> None:
    with OllamaLike(models=("qwen2.5:7b-instruct",)) as server:
        up = Settings(
            data_dir=tmp_path,
            llm_backend="ollama",
            llm_model="qwen2.5:7b-instruct",
            ollama_host=server.url,
        )
        seen = llm_identity(up)
    assert seen.version == fake_digest("qwen2.5:7b-instruct")
    down = llm_identity(up)  # same host, server gone
    assert str(down) == str(seen)
    assert "last known digest" in down.note
    fresh_dir = llm_identity(up.model_copy(update={"data_dir": tmp_path / "other"}))
    assert fresh_dir.version == ""  # nothing remembered there: the honest answer
