"""Model backends built once per process from the settings, loaded on first use."""

from __future__ import annotations

from collections import Counter
from functools import cached_property

from profiling_assets.config import Settings
from profiling_assets.core.signals import LabelIndex
from profiling_assets.core.spec_rules import ProfilePolicy
from profiling_assets.models.base import Embedder, ProfileLLM, Reranker
from profiling_assets.models.registry import (
    build_embedder,
    build_llm,
    build_reranker,
    embedder_identity,
)
from profiling_assets.stores.label_vectors import cached_label_index


class ModelHub:
    """Holds the configured embedder, reranker and LLM for a run; `builds` counts the
    backends built, so a test (and a curious operator) can see that an unchanged run built
    none."""

    def __init__(self, settings: Settings, policy: ProfilePolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.builds: Counter[str] = Counter()

    @cached_property
    def embedder(self) -> Embedder:
        self.builds["embedder"] += 1
        return build_embedder(self.settings)

    @cached_property
    def reranker(self) -> Reranker:
        self.builds["reranker"] += 1
        return build_reranker(self.settings, self.embedder)

    @cached_property
    def llm(self) -> ProfileLLM:
        self.builds["llm"] += 1
        return build_llm(self.settings)

    @cached_property
    def label_index(self) -> LabelIndex:
        """The spec's labels, embedded once per embedder identity and kept on disk; the
        embedder is built only when they are not there yet."""
        return cached_label_index(
            embedder_identity(self.settings),
            self.policy.labels,
            self.settings.cache_dir,
            lambda: self.embedder,
        )
