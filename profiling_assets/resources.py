"""Model backends built once per process from the settings, loaded on first use."""

from __future__ import annotations

from functools import cached_property

from profiling_assets.config import Settings
from profiling_assets.core.profile_inputs import build_label_index
from profiling_assets.core.signals import LabelIndex
from profiling_assets.core.spec_rules import ProfilePolicy
from profiling_assets.models.base import Embedder, ProfileLLM, Reranker
from profiling_assets.models.registry import build_embedder, build_llm, build_reranker


class ModelHub:
    """Holds the configured embedder, reranker and LLM for a run."""

    def __init__(self, settings: Settings, policy: ProfilePolicy) -> None:
        self.settings = settings
        self.policy = policy

    @cached_property
    def embedder(self) -> Embedder:
        return build_embedder(self.settings)

    @cached_property
    def reranker(self) -> Reranker:
        return build_reranker(self.settings, self.embedder)

    @cached_property
    def llm(self) -> ProfileLLM:
        return build_llm(self.settings)

    @cached_property
    def label_index(self) -> LabelIndex:
        """The spec's labels embedded once per process, calibrated on fixed passages."""
        return build_label_index(self.embedder, self.policy)
