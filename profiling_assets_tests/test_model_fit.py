"""Fitting the request to the model (issue 12): the answer schema chosen from the model's size,
a truncated answer retried differently, one fixed Ollama context, the GPU pool, label vectors
cached per embedder, and `doctor` on exact model names and what Ollama holds in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from profiling_assets.config import Settings
from profiling_assets.core.profiling.prompt import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT
from profiling_assets.core.profiling.run import ProfileInput, more_answer_room, profile_user
from profiling_assets.models.base import LLMReply, ModelError, ModelIdentity
from profiling_assets.models.llm_ollama import (
    DEFAULT_OLLAMA_LLM,
    OllamaLLM,
    default_num_ctx,
    parameter_count,
)
from profiling_assets.models.llm_openai import OpenAICompatLLM
from profiling_assets.models.registry import build_llm, llm_schema
from profiling_assets_tests.bad_inputs import chat_reply
from profiling_assets_tests.ollama_like import OllamaLike, serving
from profiling_assets_tests.test_llm_profiles import POLICY, buyer, good_profile

# -- 2. the answer schema fits the model ----------------------------------------------------


@pytest.mark.parametrize(
    ("size", "count"),
    [("7.6B", 7_600_000_000), ("270M", 270_000_000), ("1.5B", 1_500_000_000), ("", 0)],
)
def test_ollama_parameter_size_is_read(size: str, count: int) -> None:
    assert parameter_count(size) == count


@pytest.mark.parametrize(
    ("size", "setting", "expected"),
    [
        ("1.5B", "auto", "compact"),
        ("7.6B", "auto", "full"),
        ("7.6B", "compact", "compact"),
        ("1.5B", "full", "full"),
    ],
)
def test_ollama_schema_follows_the_reported_size_unless_set(
    tmp_path: Path, size: str, setting: str, expected: str
) -> None:
    with OllamaLike(models=("qwen-test",), parameter_sizes={"qwen-test": size}) as server:
        settings = Settings(
            data_dir=tmp_path,
            llm_backend="ollama",
            llm_model="qwen-test",
            ollama_host=server.url,
            llm_schema=setting,  # type: ignore[arg-type]
        )
        assert llm_schema(settings) == expected
        llm = build_llm(settings)
    assert llm.compact_schema is (expected == "compact")


def test_schema_choice_survives_a_server_that_is_down(tmp_path: Path) -> None:
    """The choice is in code_version: a server that is down for a moment must not flip it."""
    with OllamaLike(models=("qwen-test",), parameter_sizes={"qwen-test": "0.5B"}) as server:
        settings = Settings(
            data_dir=tmp_path, llm_backend="ollama", llm_model="qwen-test", ollama_host=server.url
        )
        assert llm_schema(settings) == "compact"
    # The same host answers nothing now: the last size it reported still decides.
    assert llm_schema(settings) == "compact"


def test_openai_server_without_a_size_gets_the_full_schema(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        llm_backend="openai",
        llm_model="m",
        openai_base_url="http://127.0.0.1:9/v1",
    )
    assert llm_schema(settings) == "full"


def test_schema_choice_is_in_the_profiles_code_version(tmp_path: Path) -> None:
    from profiling_assets.pipeline import build_definitions

    def version(schema: str) -> str:
        settings = Settings(data_dir=tmp_path, llm_schema=schema)  # type: ignore[arg-type]
        profiles = build_definitions(settings).resolve_assets_def("user_profiles")
        return str(profiles.code_versions_by_key[profiles.key])

    assert version("compact") != version("full")
    assert version("auto") == version("compact")  # offline: auto is compact


def test_compact_openai_request_is_tightened_for_a_small_model() -> None:
    """A compact answer over HTTP gets the same grammar-only tightening as offline: numbers on
    a 0.1 grid, free text without digits or escapes (a 270M model writes 0.0000… otherwise)."""
    from profiling_assets_tests.test_llm_profiles import _OpenAIHandler, compact_answer

    handler = type("H", (_OpenAIHandler,), {"answer": compact_answer(), "seen": []})
    with serving(handler) as url:
        llm = OpenAICompatLLM("m", f"{url}/v1", SecretStr(""), compact_schema=True, timeout_s=10)
        facts, evidence, candidates, _ = buyer()
        outcome = profile_user(
            llm, ProfileInput(facts, evidence, candidates), POLICY, token_budget=1800
        )
    assert outcome.ok, outcome.attempt_errors
    sent = handler.seen[0]["response_format"]["json_schema"]["schema"]["properties"]
    assert sent["purchase_intent"]["properties"]["probability"]["enum"][-1] == 1.0
    assert "pattern" in sent["portrait"]["properties"]["value"]
    assert COMPACT_SYSTEM_PROMPT in handler.seen[0]["messages"][0]["content"]


# -- 3. a truncated answer is retried differently -------------------------------------------


class Truncating:
    """Answers /api/chat: cut off ("length") unless the request allows `needs` tokens, or,
    with `compact_only`, unless it asks for the compact schema."""

    def __init__(
        self, needs: int = 10_000, compact_only: bool = False, prompt_tokens: int = 100
    ) -> None:
        self.needs = needs
        self.compact_only = compact_only
        self.prompt_tokens = prompt_tokens  # what the server says the prompt cost
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return self.answer(body) | {"prompt_eval_count": self.prompt_tokens}

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        compact = COMPACT_SYSTEM_PROMPT in body["messages"][0]["content"]
        enough = body["options"]["num_predict"] >= self.needs
        if compact:
            answer = json.dumps(
                {
                    "interest_summary": {"value": "关注眼部整形", "evidence": ["E1"]},
                    "portrait": {"value": "谨慎比较的回头客", "evidence": ["E2"]},
                    "recommendation_reasons": {"value": ["有眼部手术经历"], "evidence": ["E1"]},
                    "next_action": {"value": "推荐眼整形医生面诊", "evidence": ["E1"]},
                    "purchase_intent": {"value": "中", "probability": 0.5, "evidence": ["E2"]},
                },
                ensure_ascii=False,
            )
            return chat_reply(body, answer)
        full = good_profile().model_dump_json()
        if enough and not self.compact_only:
            return chat_reply(body, full)
        return chat_reply(body, full[: len(full) // 3], done_reason="length")


def _profile_with(handler: Truncating, max_retries: int = 2, **llm: Any):
    with OllamaLike(models=("qwen-test",), chat_handler=handler) as server:
        model = OllamaLLM("qwen-test", server.url, max_tokens=300, timeout_s=10, **llm)
        facts, evidence, candidates, _ = buyer()
        return profile_user(
            model,
            ProfileInput(facts, evidence, candidates),
            POLICY,
            token_budget=1800,
            max_retries=max_retries,
            sleep=lambda s: None,
        )


def _requests_differ(bodies: list[dict[str, Any]]) -> bool:
    keys = [json.dumps(b, sort_keys=True, ensure_ascii=False) for b in bodies]
    return len(set(keys)) == len(keys)


def test_truncated_answer_gets_more_room_within_the_context() -> None:
    handler = Truncating(needs=600)
    outcome = _profile_with(handler, num_ctx=4096)
    assert outcome.ok and outcome.attempts == 2, outcome.attempt_errors
    first, second = handler.bodies
    assert second["options"]["num_predict"] == 600 > first["options"]["num_predict"] == 300
    assert second["messages"] == first["messages"] and second["format"] == first["format"]
    assert second["options"]["num_ctx"] == first["options"]["num_ctx"] == 4096
    assert "截断" in outcome.attempt_errors[0]


def test_truncated_answer_then_goes_compact() -> None:
    handler = Truncating(compact_only=True)
    outcome = _profile_with(handler, num_ctx=4096)
    assert outcome.ok and outcome.attempts == 3, outcome.attempt_errors
    assert [b["options"]["num_predict"] for b in handler.bodies] == [300, 600, 600]
    assert COMPACT_SYSTEM_PROMPT in handler.bodies[2]["messages"][0]["content"]
    assert "E1" in json.dumps(handler.bodies[2]["format"])
    assert _requests_differ(handler.bodies)
    assert outcome.attempt_kinds == ("truncated", "truncated")
    assert outcome.profile is not None and outcome.profile.cited_ids()


def test_no_room_in_the_context_goes_compact_at_once() -> None:
    # A context the prompt nearly fills: no more room, so the compact schema comes next.
    handler = Truncating(compact_only=True, prompt_tokens=900)
    outcome = _profile_with(handler, num_ctx=1024)
    assert outcome.ok and outcome.attempts == 2, outcome.attempt_errors
    assert handler.bodies[1]["options"]["num_predict"] == 300
    assert COMPACT_SYSTEM_PROMPT in handler.bodies[1]["messages"][0]["content"]


def test_truncated_every_way_fails_as_truncated_without_repeating_a_request() -> None:
    class AlwaysCut(Truncating):
        def answer(self, body: dict[str, Any]) -> dict[str, Any]:
            reply = super().answer(body)
            reply["done_reason"] = "length"
            reply["message"]["content"] = reply["message"]["content"][:40]
            return reply

    handler = AlwaysCut()
    outcome = _profile_with(handler, max_retries=5, num_ctx=4096)
    assert not outcome.ok and outcome.failure_kind == "truncated"
    assert outcome.attempts == 3  # more room, then compact; nothing else would differ
    assert _requests_differ(handler.bodies)


@pytest.mark.parametrize(
    ("limit", "context", "prompt", "expected"),
    [(300, 4096, 1000, 600), (700, 2048, 1000, 984), (700, 1024, 1000, None), (300, 0, 10, None)],
)
def test_more_answer_room_stays_inside_the_context(
    limit: int, context: int, prompt: int, expected: int | None
) -> None:
    assert more_answer_room(limit, context, prompt) == expected


# -- 6. one fixed Ollama context --------------------------------------------------------------


def test_ollama_num_ctx_is_fixed_from_the_budget_not_per_prompt() -> None:
    handler = Truncating(needs=0)
    with OllamaLike(models=("qwen-test",), chat_handler=handler) as server:
        settings = Settings(
            llm_backend="ollama",
            llm_model="qwen-test",
            ollama_host=server.url,
            llm_prompt_token_budget=1800,
            llm_max_tokens=700,
        )
        llm = build_llm(settings)
        short = [{"role": "system", "content": "短"}, {"role": "user", "content": "短"}]
        long = [{"role": "system", "content": "长" * 50}, {"role": "user", "content": "长" * 1500}]
        llm.generate(short, {"type": "object"})
        llm.generate(long, {"type": "object"})
        fixed = build_llm(settings.model_copy(update={"ollama_num_ctx": 8192}))
        fixed.generate(short, {"type": "object"})
    sizes = [b["options"]["num_ctx"] for b in handler.bodies]
    assert sizes == [3072, 3072, 8192]
    assert default_num_ctx(1800, 700) == 3072


# -- 7. doctor: exact names, and what Ollama holds ------------------------------------------


def _doctor(tmp_path: Path, server: OllamaLike, **overrides: Any) -> dict[str, Any]:
    from profiling_assets.commands.doctor import check_models

    settings = Settings(
        data_dir=tmp_path, llm_backend="ollama", ollama_host=server.url, **overrides
    )
    return {f.topic: f for f in check_models(settings)}


def test_doctor_looks_for_the_default_model_by_its_exact_tag(tmp_path: Path) -> None:
    with OllamaLike(models=(DEFAULT_OLLAMA_LLM, "bge-m3")) as server:
        found = _doctor(tmp_path, server)
    assert found[f"Ollama LLM {DEFAULT_OLLAMA_LLM}"].ok


def test_doctor_does_not_take_a_near_name_for_the_configured_one(tmp_path: Path) -> None:
    with OllamaLike(models=("qwen2.5:7b-instruct",)) as server:
        found = _doctor(tmp_path, server)
    finding = found[f"Ollama LLM {DEFAULT_OLLAMA_LLM}"]
    assert not finding.ok and finding.blocking
    assert f"ollama pull {DEFAULT_OLLAMA_LLM}" in finding.detail


def test_doctor_shows_what_ollama_holds_in_memory(tmp_path: Path) -> None:
    from profiling_assets.models.embed_ollama import OllamaEmbedder

    handler = Truncating(needs=0)
    with OllamaLike(models=("qwen-test", "bge-m3"), chat_handler=handler) as server:
        OllamaEmbedder("bge-m3", server.url, num_gpu=0).embed_passages(["你好"])
        OllamaLLM("qwen-test", server.url).generate(
            [{"role": "user", "content": "你好"}], {"type": "object"}
        )
        found = _doctor(tmp_path, server, llm_model="qwen-test")
    embed = found["Ollama 已加载 bge-m3:latest"].detail
    chat = found["Ollama 已加载 qwen-test:latest"].detail
    assert "显存 0.0 GB" in embed and "CPU 占 100%" in embed  # num_gpu 0: embeddings on CPU
    assert "显存 4.7 GB" in chat and "CPU 占 0%" in chat and "到期" in chat
    assert found["LLM 输出模式"].detail.startswith("full")


def test_doctor_without_a_server_still_reports(tmp_path: Path) -> None:
    from profiling_assets.commands.doctor import check_models

    found = {f.topic: f for f in check_models(Settings(data_dir=tmp_path))}
    assert not found["Ollama"].ok and not found["Ollama"].blocking
    assert found["LLM 输出模式"].detail.startswith("compact")


# -- 6. one GPU, shared on purpose -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"chunk_embeddings": "lancedb", "profile_evidence": None, "user_profiles": "gpu"}),
        (
            {"embedder_backend": "flagembedding"},
            {"chunk_embeddings": "gpu", "profile_evidence": "gpu", "user_profiles": "gpu"},
        ),
        (
            {"reranker_backend": "flagembedding"},
            {"chunk_embeddings": "lancedb", "profile_evidence": "gpu", "user_profiles": "gpu"},
        ),
        (
            {"embedder_backend": "ollama", "ollama_host": "http://127.0.0.1:9"},
            {"chunk_embeddings": "gpu", "profile_evidence": "gpu", "user_profiles": "gpu"},
        ),
    ],
)
def test_every_step_that_may_load_a_gpu_model_is_in_the_gpu_pool(
    tmp_path: Path, overrides: dict[str, str], expected: dict[str, str | None]
) -> None:
    from profiling_assets.pipeline import build_definitions

    defs = build_definitions(Settings(data_dir=tmp_path, **overrides))  # type: ignore[arg-type]
    assert {key: defs.resolve_assets_def(key).op.pool for key in expected} == expected


def test_the_instance_gives_the_gpu_pool_one_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profiling_assets.commands.instance import open_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))  # restored afterwards
    instance = open_instance(Settings(data_dir=tmp_path))
    try:
        for pool in ("gpu", "lancedb"):
            assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 1
    finally:
        instance.dispose()


# -- 5. every failure has a kind -------------------------------------------------------------


class Scripted:
    """A backend answering the given replies (or raising the given errors) in turn."""

    identity = ModelIdentity(backend="scripted", model="kinds")

    def __init__(self, *replies: LLMReply | ModelError) -> None:
        self.replies = list(replies)
        self.calls = 0

    def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int | None = None
    ) -> LLMReply:
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(reply, ModelError):
            raise reply
        return reply


def _leaking_answer() -> str:
    profile = good_profile().model_dump()
    profile["portrait"]["value"] = SYSTEM_PROMPT.splitlines()[0][:30]
    return json.dumps(profile, ensure_ascii=False)


@pytest.mark.parametrize(
    ("replies", "kind", "calls", "transport_only"),
    [
        ((ModelError("connection refused"),), "transport", 3, True),
        ((ModelError("HTTP 400: prompt too long", kind="refused"),), "refused", 1, False),
        ((LLMReply(text="", refusal="抱歉，无法回答"),), "refused", 1, False),
        ((LLMReply(text="{不是 JSON"),), "bad_answer", 3, False),
        ((LLMReply(text=_leaking_answer()),), "leak", 3, False),
        ((LLMReply(text="{不是 JSON"), ModelError("timed out")), "transport", 3, False),
    ],
)
def test_each_failure_has_its_kind(
    replies: tuple[LLMReply | ModelError, ...], kind: str, calls: int, transport_only: bool
) -> None:
    llm = Scripted(*replies)
    facts, evidence, candidates, _ = buyer()
    outcome = profile_user(
        llm,
        ProfileInput(facts, evidence, candidates),
        POLICY,
        token_budget=1800,
        max_retries=2,
        sleep=lambda s: None,
    )
    assert not outcome.ok and outcome.failure_kind == kind
    assert llm.calls == calls  # a refusal is not asked again: the same request is declined
    assert outcome.transport_only is transport_only


def test_doctor_checks_each_server_of_a_pool(tmp_path: Path) -> None:
    """Several Ollama hosts: each is reported on its own (a list once crashed doctor)."""
    from profiling_assets.commands.doctor import check_models

    with (
        OllamaLike(models=(DEFAULT_OLLAMA_LLM,)) as full,
        OllamaLike(models=("bge-m3",)) as lacking,
    ):
        one, two = full.url, lacking.url
        settings = Settings(data_dir=tmp_path, llm_backend="ollama", ollama_host=f"{one},{two}")
        found = {f.topic: f for f in check_models(settings)}
    assert found[f"Ollama {one}"].ok and found[f"Ollama {two}"].ok
    assert found[f"Ollama {one} LLM {DEFAULT_OLLAMA_LLM}"].ok
    missing = found[f"Ollama {two} LLM {DEFAULT_OLLAMA_LLM}"]
    assert not missing.ok and f"ollama pull {DEFAULT_OLLAMA_LLM}" in missing.detail
