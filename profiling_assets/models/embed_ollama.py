"""Embeddings from an Ollama server, kept on CPU (`num_gpu: 0`) while the LLM holds the GPU."""

from __future__ import annotations

import httpx
import numpy as np
import ollama

from profiling_assets.models._vectors import unit_rows
from profiling_assets.models.base import DECLINED_STATUSES, ModelError, ModelIdentity
from profiling_assets.models.endpoint_pool import DEFAULT_COOLDOWN_S
from profiling_assets.models.endpoints import METADATA_TIMEOUT, shown
from profiling_assets.models.ollama_client import full_tag, pooled_clients
from profiling_assets.models.pool_identity import AskedOnce, agreed_identity

DEFAULT_OLLAMA_EMBEDDER = "bge-m3"
# Fallback dims when /api/show cannot be asked; the server's own answer wins.
_KNOWN_DIMS = {
    "bge-m3": 1024,
    "qwen3-embedding": 4096,
    "qwen3-embedding:0.6b": 1024,
    "qwen3-embedding:4b": 2560,
    "qwen3-embedding:8b": 4096,
}
# qwen3-embedding is instruction-tuned for queries; bge-m3 takes raw text on both sides.
_QUERY_PREFIXES = {
    "qwen3-embedding": "Instruct: Given a question about a customer, "
    "retrieve the records that answer it\nQuery: ",
}


def _base_name(name: str) -> str:
    return full_tag(name).rsplit(":", 1)[0]


class OllamaEmbedder:
    """`Embedder` over `ollama.Client.embed`, batched, with errors raised as `ModelError`.

    `identity` asks the server (`/api/tags` for the digest, `/api/show` for the dimension) on
    first access only; when it cannot, it falls back to the tag and a known dimension.
    `host` may list several servers: each batch goes to the least busy one, and they must
    agree on the model (`pool_identity`).
    """

    def __init__(
        self,
        model: str = DEFAULT_OLLAMA_EMBEDDER,
        host: str = "http://127.0.0.1:11434",
        num_gpu: int = 0,
        keep_alive: str = "10m",
        batch_size: int = 32,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 3.0,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        self.model = model
        self.host = host
        self.num_gpu = num_gpu
        self.keep_alive = keep_alive
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.load_s = 0.0
        self.query_prefix = _QUERY_PREFIXES.get(_base_name(model), "")
        self._clients, self.pool = pooled_clients(
            host, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, cooldown_s=cooldown_s
        )
        self._identity = AskedOnce(lambda: agreed_identity(self.pool.urls, self._ask_identity))

    @property
    def identity(self) -> ModelIdentity:
        return self._identity.get()

    def _ask_identity(self, host: str) -> ModelIdentity:
        tag = full_tag(self.model)
        dim = _KNOWN_DIMS.get(tag, _KNOWN_DIMS.get(self.model, 0))
        version, note = tag.rsplit(":", 1)[1], ""
        meta = ollama.Client(host=host, timeout=METADATA_TIMEOUT)
        try:
            listed = {entry.model: entry for entry in meta.list().models}
            entry = listed.get(tag)
            if entry is None or not entry.digest:
                note = f"not pulled on {shown(host)}"
            else:
                version = entry.digest.removeprefix("sha256:")[:12]
                info = meta.show(tag).modelinfo or {}
                dims = [int(v) for k, v in info.items() if k.endswith(".embedding_length")]
                dim = dims[0] if dims else dim
        except (ConnectionError, ollama.ResponseError, httpx.HTTPError, ValueError) as exc:
            # Identity must not fail a definitions load; the embed call will fail loudly instead.
            note = f"digest unknown ({type(exc).__name__}: {exc})"[:200]
        return ModelIdentity(backend="ollama", model=tag, version=version, dim=dim, note=note)

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        return self.pool.call(lambda host: self._embed_batch_at(host, batch))

    def _embed_batch_at(self, host: str, batch: list[str]) -> np.ndarray:
        try:
            reply = self._clients[host].embed(
                model=self.model,
                input=batch,
                options={"num_gpu": self.num_gpu},
                keep_alive=self.keep_alive,
            )
        except ConnectionError as exc:
            raise ModelError(
                f"Ollama at {shown(host)} is unreachable: start `ollama serve` there "
                f"or set PROFILING_OLLAMA_HOST ({exc})"
            ) from exc
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ModelError(
                    f"model {self.model!r} is not on {shown(host)}: run `ollama pull {self.model}` "
                    f"({exc.error})"
                ) from exc
            # A declined request (400/422) is the same on every server: nothing to fail over.
            kind = "refused" if exc.status_code in DECLINED_STATUSES else "transport"
            raise ModelError(
                f"Ollama embed failed, HTTP {exc.status_code}: {exc.error}", kind=kind
            ) from exc
        except httpx.TimeoutException as exc:
            raise ModelError(f"Ollama embed timed out after {self.timeout_s}s") from exc
        except httpx.HTTPError as exc:
            raise ModelError(f"Ollama embed transport error: {exc!r}") from exc
        except ValueError as exc:  # non-JSON body or a body of the wrong shape
            raise ModelError(f"Ollama embed answered something unreadable: {exc}") from exc
        self.load_s += (reply.load_duration or 0) / 1e9
        vectors = np.asarray(reply.embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(batch):
            raise ModelError(f"Ollama gave {vectors.shape} vectors for {len(batch)} texts")
        return vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        dim = self.identity.dim
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        parts = [
            self._embed_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts, axis=0)
        if dim and vectors.shape[1] != dim:
            # Vector tables are sized from the identity; a silent change would corrupt them.
            raise ModelError(f"Ollama gave {vectors.shape[1]}-d vectors, identity says {dim}")
        return unit_rows(vectors, vectors.shape[1])

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed([self.query_prefix + text for text in texts])
