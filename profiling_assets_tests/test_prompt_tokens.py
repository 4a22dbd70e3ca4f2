"""The prompt bound measured with the offline model's own tokenizer, not the code's estimator:
llama.cpp's `/apply-template` + `/tokenize` on the server xllamacpp runs in-process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from profiling_assets.commands.bench import long_history_messages as bench_long_history_messages
from profiling_assets.commands.bench import long_history_prompt_tokens
from profiling_assets.config import Settings
from profiling_assets.core.profiling.prompt import estimate_tokens
from profiling_assets.core.spec import load_spec
from profiling_assets.models.llm_xllamacpp import XllamacppLLM

# README's target for a 5,000-message user, and what a slot of the offline model holds.
PROMPT_TOKEN_TARGET = 2_000


def long_history_messages(settings: Settings, compact: bool) -> list[dict[str, str]]:
    """The prompt `bench.long_history_prompt_tokens` sizes, for the configured spec."""
    return bench_long_history_messages(settings, load_spec(settings.spec), compact)


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings()
    llm = XllamacppLLM(
        Path(tmp_path_factory.mktemp("models")),
        prompt_token_budget=settings.llm_prompt_token_budget,
        max_tokens=settings.llm_max_tokens,
    )
    address = llm.listening_address
    yield address if address.startswith("http") else f"http://{address}"
    del llm


def real_prompt_tokens(url: str, messages: list[dict[str, str]]) -> int:
    """Tokens the model is fed: the chat template applied, then its tokenizer."""
    templated = httpx.post(f"{url}/apply-template", json={"messages": messages}, timeout=30)
    templated.raise_for_status()
    prompt = templated.json()["prompt"]
    tokens = httpx.post(
        f"{url}/tokenize", json={"content": prompt, "add_special": True}, timeout=30
    )
    tokens.raise_for_status()
    return len(tokens.json()["tokens"])


@pytest.mark.parametrize("compact", [False, True], ids=["full", "compact"])
def test_a_5000_message_user_fits_the_bound_by_the_real_tokenizer(
    llama_url: str, compact: bool
) -> None:
    settings = Settings()
    messages = long_history_messages(settings, compact)
    estimated = sum(estimate_tokens(m["content"]) for m in messages)
    if not compact:  # the very prompt the bench reports
        assert estimated == long_history_prompt_tokens(settings, load_spec(settings.spec))
    real = real_prompt_tokens(llama_url, messages)
    assert real <= settings.llm_prompt_token_budget <= PROMPT_TOKEN_TARGET, (real, estimated)
    # The estimator is the conservative side of the real count (it is what bounds the prompt).
    assert real <= estimated, (real, estimated)
    print({"compact": compact, "real_tokens": real, "estimated_tokens": estimated})


def test_the_tokenize_endpoint_counts_tokens_not_characters(llama_url: str) -> None:
    """Guards the measurement itself: 100 characters of Chinese are not 100 tokens of one
    character each nor a single token."""
    text = "这个项目恢复期多久，价格能不能再优惠一点？" * 5
    tokens = httpx.post(f"{llama_url}/tokenize", json={"content": text}, timeout=30).json()
    assert 10 < len(tokens["tokens"]) < len(text)
