"""The `models` resource: model identities are asked of a server once per definitions load,
and models load on first use, once per process, however many runs use them."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg

from profiling_assets.config import Settings
from profiling_assets.core.spec import load_spec
from profiling_assets.core.spec_rules import build_policy
from profiling_assets.models.registry import model_identities
from profiling_assets.models.rerank_embedder import EmbedderReranker
from profiling_assets.pipeline import build_definitions
from profiling_assets.resources import ModelHub
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import TEST_LLM, ollama_settings

EMBEDDER = "bge-m3"


def _ollama_everything(data_dir: Path, host: str) -> Settings:
    return ollama_settings(
        data_dir, host, embedder_backend="ollama", embedder_model=EMBEDDER, llm_schema="auto"
    )


def test_a_definitions_load_asks_the_server_for_each_identity_once(tmp_path: Path) -> None:
    with OllamaLike(models=(TEST_LLM, EMBEDDER), parameter_sizes={TEST_LLM: "7B"}) as server:
        defs = build_definitions(_ollama_everything(tmp_path, server.url))
        listed = len(server.requests_to("/api/tags"))
        shown = len(server.requests_to("/api/show"))
        used = [r.path for r in server.requests if r.path in ("/api/chat", "/api/embed")]
    # One model list for the LLM, one for the embedder (whose dimension comes from show);
    # the answer schema and the reranker reuse those identities.
    assert (listed, shown) == (2, 1)
    assert used == []  # nothing loads at definitions time
    hub = defs.resources["models"]
    assert isinstance(hub, ModelHub) and hub.builds == {} and hub.models_used == set()
    assert hub.identities.llm_schema == "full"  # 7B, reported once, decides the schema
    # The reranker scores with the embedder's vectors: its identity is built on that one.
    assert hub.identities.reranker.model == hub.identities.embedder.model
    assert hub.identities.embedder.version in hub.identities.reranker.version


def _hub(settings: Settings) -> ModelHub:
    policy = build_policy(load_spec(settings.spec))
    return ModelHub(settings=settings, policy=policy, identities=model_identities(settings))


def test_models_load_once_per_process_across_runs_and_one_per_kind(tmp_path: Path) -> None:
    with OllamaLike(models=(TEST_LLM, EMBEDDER)) as server:
        settings = _ollama_everything(tmp_path / "a", server.url)
        hub = _hub(settings)
        handed: list[object] = []

        @dg.asset
        def uses_the_embedder(models: ModelHub) -> None:
            assert models is not hub  # Dagster hands each run a copy of the resource
            handed.append(models.embedder)

        defs = dg.Definitions(assets=[uses_the_embedder], resources={"models": hub})
        for _ in range(2):
            result = defs.resolve_job_def("__ASSET_JOB").execute_in_process()
            assert result.success
        assert handed[0] is handed[1]  # the second run's copy found the process's model
        assert hub.builds == {"embedder": 1}
        assert hub.models_used == {"embedder"}

        # Other settings build their own model, which replaces the first: one per kind.
        other = _hub(_ollama_everything(tmp_path / "b", server.url))
        assert other.embedder is not handed[0]
        assert other.builds == {"embedder": 1} and hub.builds == {"embedder": 1}
        assert _hub(settings).embedder is not handed[0]  # the first was let go, built again


def test_the_reranker_is_built_on_the_process_embedder(tmp_path: Path) -> None:
    with OllamaLike(models=(TEST_LLM, EMBEDDER)) as server:
        hub = _hub(_ollama_everything(tmp_path, server.url))
        built: list[EmbedderReranker] = []
        # In a thread: building the reranker asks for the embedder while the reranker is
        # being built; a lock that is not re-entrant would hang here.
        worker = threading.Thread(target=lambda: built.append(hub.reranker), daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert built, "building the reranker hung on the models' lock"
        assert built[0].embedder is hub.embedder
        assert hub.builds == {"embedder": 1, "reranker": 1}
