"""The part every HTTP profile LLM shares: one request, sent through an `EndpointPool`.

A backend (`OllamaLLM`, `OpenAICompatLLM`) keeps one client per server and implements
`_generate_at`: one `ChatRequest` to one server. `generate` is written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from profiling_assets.models.base import LLMReply
from profiling_assets.models.endpoint_pool import EndpointPool


@dataclass(frozen=True)
class ChatRequest:
    """One profile request: the chat messages, the JSON schema the answer must follow and
    the answer's token limit (None: the backend's own `max_tokens`)."""

    messages: list[dict[str, str]]
    schema: dict[str, Any]
    max_tokens: int | None


class PooledLLM(ABC):
    """A `ProfileLLM` served by one or more servers of one model behind `pool`, which sends
    each request to the least busy server and sets aside one that fails."""

    pool: EndpointPool

    def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int | None = None
    ) -> LLMReply:
        request = ChatRequest(messages, self._schema_for_server(schema), max_tokens)
        return self.pool.call(lambda endpoint: self._generate_at(endpoint, request))

    def _schema_for_server(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema as this backend sends it; as given unless a backend overrides it."""
        return schema

    @abstractmethod
    def _generate_at(self, endpoint: str, request: ChatRequest) -> LLMReply:
        """`request` answered by the server at `endpoint`; `ModelError` when it fails."""
