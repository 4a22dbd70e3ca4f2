"""The `models` resource: the configured embedder, reranker and LLM, each built on first use
and kept for the process."""

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from profiling_assets.config import Settings
from profiling_assets.core.label_scoring import LabelIndex
from profiling_assets.core.spec import ProfileSpec, load_spec
from profiling_assets.core.spec_rules import ProfilePolicy, build_policy
from profiling_assets.models.base import Embedder, ProfileLLM, Reranker
from profiling_assets.models.registry import (
    ModelIdentities,
    build_embedder,
    build_llm,
    build_reranker,
    model_identities,
)
from profiling_assets.stores.label_vectors import cached_label_index


class _LoadedModels:
    """One model per kind for the process, keyed by the settings that built it.

    Dagster hands every run (and every Celery step) a fresh copy of a resource, so models
    cached on the resource would load again per run; kept here, runs in one process share
    them. A model built under other settings replaces the one before, so a process never
    holds two of a kind (tests build many configurations in one process)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # building the reranker gets the embedder
        self._models: dict[str, tuple[str, Any]] = {}
        self.builds: Counter[tuple[str, str]] = Counter()
        self.handed_out: Counter[tuple[str, str]] = Counter()

    def get(self, kind: str, settings_key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            self.handed_out[(kind, settings_key)] += 1
            held = self._models.get(kind)
            if held is not None and held[0] == settings_key:
                return held[1]
            self._models.pop(kind, None)  # let the previous model go before loading another
            model = build()
            self._models[kind] = (settings_key, model)
            self.builds[(kind, settings_key)] += 1
            return model

    def forget(self) -> None:
        with self._lock:
            self._models.clear()


_LOADED = _LoadedModels()


def forget_loaded_models() -> None:
    """Drop the process's models, as a new process starts (tests of the on-disk caches)."""
    _LOADED.forget()


class ModelHub(dg.ConfigurableResource):
    """The models of one configuration. Nothing loads until an asset asks: an unchanged run
    loads none. `builds` / `models_used` count, since this hub was made, the models built in
    this process and those handed to a step, so a test (and a curious operator) can see that
    an unchanged run used none."""

    settings: dg.ResourceDependency[Settings]
    policy: dg.ResourceDependency[ProfilePolicy]
    identities: dg.ResourceDependency[ModelIdentities]
    _builds_at_start: Counter[tuple[str, str]] = PrivateAttr(default_factory=Counter)
    _handed_out_at_start: Counter[tuple[str, str]] = PrivateAttr(default_factory=Counter)
    _label_index: LabelIndex | None = PrivateAttr(default=None)

    @classmethod
    def configured(cls, settings: Settings, spec: ProfileSpec | None = None) -> "ModelHub":
        """A hub outside a Dagster run (bench, tests); the spec is the configured one unless
        given."""
        policy = build_policy(spec or load_spec(settings.spec))
        return cls(settings=settings, policy=policy, identities=model_identities(settings))

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._builds_at_start = _LOADED.builds.copy()
        self._handed_out_at_start = _LOADED.handed_out.copy()

    @property
    def settings_key(self) -> str:
        return self.settings.model_dump_json()

    def _since_start(self, now: Counter, start: Counter) -> Counter[str]:
        return Counter(
            {
                kind: count - start[(kind, key)]
                for (kind, key), count in now.items()
                if key == self.settings_key and count > start[(kind, key)]
            }
        )

    @property
    def builds(self) -> Counter[str]:
        """Models built in this process for these settings since this hub was made."""
        return self._since_start(_LOADED.builds, self._builds_at_start)

    @property
    def models_used(self) -> set[str]:
        """The kinds of model handed out for these settings since this hub was made."""
        return set(self._since_start(_LOADED.handed_out, self._handed_out_at_start))

    @property
    def embedder(self) -> Embedder:
        return _LOADED.get("embedder", self.settings_key, lambda: build_embedder(self.settings))

    @property
    def reranker(self) -> Reranker:
        return _LOADED.get(
            "reranker", self.settings_key, lambda: build_reranker(self.settings, self.embedder)
        )

    @property
    def llm(self) -> ProfileLLM:
        return _LOADED.get("llm", self.settings_key, self._build_llm)

    def _build_llm(self) -> ProfileLLM:
        return build_llm(self.settings, self.identities.llm_schema)

    @property
    def label_index(self) -> LabelIndex:
        """The spec's labels, embedded once per embedder identity and kept on disk; the
        embedder is built only when they are not there yet."""
        if self._label_index is None:
            self._label_index = cached_label_index(
                self.identities.embedder,
                self.policy.labels,
                self.settings.cache_dir,
                lambda: self.embedder,
            )
        return self._label_index
