"""Every setting that changes an asset's output is in that asset's code version, and model
identities do not change when the weights arrive (a false stale and a new vector table)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest

from profiling_assets.config import Settings
from profiling_assets.models.embed_flag import flag_embedder_identity
from profiling_assets.models.rerank_flag import flag_reranker_identity
from profiling_assets.pipeline import build_definitions
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import ollama_settings

BELOW_PROFILES = [
    "user_profiles",
    "latest_profiles",
    "user_segments",
    "cohort_report",
    "profile_quality",
]
BELOW_EVIDENCE = ["profile_evidence", *BELOW_PROFILES]
EVIDENCE = {"profile_evidence"}
BELOW_CHUNKS = ["document_chunks", "chunk_embeddings", *BELOW_EVIDENCE]
# Each switch a user makes (test_switches runs them through the CLI): switch → (environment
# on top of the base, assets whose code version changes, backfill selection).
SWITCHES: dict[str, tuple[dict[str, str], set[str], set[str]]] = {
    "llm_model": (
        {"PROFILING_LLM_MODEL": "qwen-b"},
        set(BELOW_PROFILES),
        set(BELOW_PROFILES),
    ),
    "reranker": (
        {"PROFILING_RERANKER_BACKEND": "flagembedding"},
        {"profile_evidence"},
        set(BELOW_EVIDENCE),
    ),
    "embedder": (
        {"PROFILING_EMBEDDER_BACKEND": "flagembedding", "PROFILING_EMBEDDER_MODEL": "BAAI/bge-m3"},
        {"chunk_embeddings", "profile_evidence", "user_profiles", "user_segments"}
        | {"profile_quality"},
        {"chunk_embeddings", *BELOW_EVIDENCE},
    ),
    "prompt_version": ({}, {"user_profiles"}, set(BELOW_PROFILES)),
    "evidence_top_k": (
        {"PROFILING_EVIDENCE_TOP_K": "7"},
        {"profile_evidence"},
        set(BELOW_EVIDENCE),
    ),
    "evidence_top_n": (
        {"PROFILING_EVIDENCE_TOP_N": "3"},
        {"profile_evidence"},
        set(BELOW_EVIDENCE),
    ),
    "chunk_size": ({"PROFILING_CHUNK_SIZE": "600"}, {"document_chunks"}, set(BELOW_CHUNKS)),
    "chunk_overlap": ({"PROFILING_CHUNK_OVERLAP": "140"}, {"document_chunks"}, set(BELOW_CHUNKS)),
}


def _code_versions(settings: Settings) -> dict[str, str | None]:
    specs = build_definitions(settings).resolve_all_asset_specs()
    return {spec.key.to_user_string(): spec.code_version for spec in specs}


def _changed(before: Settings, **update: object) -> set[str]:
    old = _code_versions(before)
    new = _code_versions(before.model_copy(update=update))
    return {key for key in old if old[key] != new[key]}


@pytest.mark.parametrize("update", [{"chunk_size": 600}, {"chunk_overlap": 100}])
def test_chunking_settings_change_the_chunks_and_nothing_above(
    tmp_path: Path, update: dict[str, int]
) -> None:
    changed = _changed(Settings(data_dir=tmp_path), **update)
    assert "document_chunks" in changed
    assert not changed & {"users", "sales", "user_documents"}


def test_the_embedder_is_in_the_profiles_code_version(tmp_path: Path) -> None:
    """user_profiles scores labels with the embedder, so a new embedder rebuilds it even
    when a backfill is not asked to follow the vectors downstream."""
    changed = _changed(
        Settings(data_dir=tmp_path), embedder_backend="flagembedding", embedder_model="BAAI/bge-m3"
    )
    assert {"chunk_embeddings", "profile_evidence", "user_profiles"} <= changed
    assert "document_chunks" not in changed


def _fake_download(cache: Path, repo_id: str, hidden_size: int) -> None:
    """What the hub cache holds once FlagEmbedding has downloaded a model."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "5617a9f61b028005a4858fdac845db406aefb181"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    (snapshot / "config.json").write_text(json.dumps({"hidden_size": hidden_size}))
    (snapshot / "model.safetensors").write_bytes(b"\0" * 64)


@pytest.mark.parametrize(
    ("identity", "repo_id"),
    [
        (flag_embedder_identity, "BAAI/bge-m3"),
        (flag_reranker_identity, "BAAI/bge-reranker-v2-m3"),
    ],
)
def test_flag_identity_is_the_same_before_and_after_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identity, repo_id: str
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    before = identity(repo_id)
    _fake_download(tmp_path, repo_id, hidden_size=1024)
    after = identity(repo_id)
    assert huggingface_hub.try_to_load_from_cache(repo_id, "config.json")  # the cache is real
    assert str(after) == str(before)
    assert after.slug == before.slug  # the same LanceDB table


def test_the_profiles_code_version_is_the_same_before_and_after_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = Settings(
        data_dir=tmp_path, embedder_backend="flagembedding", embedder_model="BAAI/bge-m3"
    )
    before = _code_versions(settings)
    _fake_download(tmp_path / "hub", "BAAI/bge-m3", hidden_size=1024)
    assert _code_versions(settings) == before


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_changes_exactly_its_assets_code_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The exact set, over every asset (materialized or not): the fast twin of
    test_switches, which checks the same through `backfill --stale --dry-run`."""
    import profiling_assets.assets.profiles as profiles

    env, expected, _ = SWITCHES[name]
    with OllamaLike(models=("qwen-a", "qwen-b"), chat_handler=corpus.profile_answer) as server:
        base = ollama_settings(tmp_path, server.url, llm_model="qwen-a")
        before = _code_versions(base)
        if name == "prompt_version":
            monkeypatch.setattr(profiles, "PROMPT_VERSION", "test-next")
        update = {key.removeprefix("PROFILING_").lower(): value for key, value in env.items()}
        after = _code_versions(Settings(**(base.model_dump() | update)))
    assert before.keys() == after.keys()
    assert {key for key in before if before[key] != after[key]} == expected
