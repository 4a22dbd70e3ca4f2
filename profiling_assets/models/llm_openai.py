"""Profile LLM on any OpenAI-compatible server (vLLM, llama.cpp server) with a strict
`json_schema` response format, temperature 0."""

from __future__ import annotations

import time
from typing import Any

import openai
from pydantic import SecretStr

from profiling_assets.models.base import LLMReply, ModelError, ModelIdentity


def openai_llm_identity(model: str, base_url: str) -> ModelIdentity:
    # The server is not asked: most OpenAI-compatible servers expose no weights digest.
    return ModelIdentity(backend="openai", model=model, note=base_url)


class OpenAICompatLLM:
    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: SecretStr,
        *,
        max_tokens: int = 700,
        timeout_s: float = 180.0,
    ) -> None:
        self.identity = openai_llm_identity(model, base_url)
        self.model = model
        self.max_tokens = max_tokens
        # Local servers accept any key; the client insists on a non-empty one. The key is
        # read here only and never logged or put into the identity.
        self._key = api_key.get_secret_value()
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=self._key or "not-needed",
            timeout=timeout_s,
            max_retries=0,  # retries are the caller's, with the error fed back
        )

    def generate(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> LLMReply:
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=self.max_tokens,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "UserProfile", "schema": schema, "strict": True},
                },
            )
        except openai.OpenAIError as exc:
            # Some servers echo the key they refused, and the reason is logged and stored: cut
            # the key out, and do not chain the original error (its text holds the key).
            reason = str(exc).replace(self._key, "***") if self._key else str(exc)
            raise ModelError(f"openai-compatible chat {self.model}: {reason}") from None
        latency = time.perf_counter() - started
        if not response.choices:
            raise ModelError(f"openai-compatible chat {self.model}: no choices in the answer")
        choice = response.choices[0]
        usage = response.usage
        return LLMReply(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=latency,
            finish_reason=choice.finish_reason or "",
        )
