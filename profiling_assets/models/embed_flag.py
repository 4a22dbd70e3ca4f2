"""BGE-M3 dense embeddings through FlagEmbedding's `BGEM3FlagModel` (GPU when present)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from profiling_assets.models._vectors import unit_rows
from profiling_assets.models.base import ModelError, ModelIdentity

DEFAULT_FLAG_EMBEDDER = "BAAI/bge-m3"
# Used only when neither a local config.json nor a cached one can be read.
_KNOWN_DIMS = {DEFAULT_FLAG_EMBEDDER: 1024}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _local_fingerprint(folder: Path) -> str:
    """Short hash of config.json and the weight files' names and sizes.

    Sizes rather than contents: hashing gigabytes on every definitions load would be slow,
    and mtimes change on a plain copy, which would mark assets stale for nothing.
    """
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def _cached_config(repo_id: str) -> Path | None:
    """config.json of a Hugging Face repo already in the local cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def flag_model_facts(name: str) -> tuple[str, dict[str, Any]]:
    """(revision, config) of a FlagEmbedding model without loading it.

    A local folder is fingerprinted. A hub name has no revision here: the commit of its
    cached snapshot exists only once the weights are downloaded (in the first run), so it
    would change the identity, hence `code_version` and the vector table, between a run and
    the next for the same model. To pin a revision, name a local folder. The cached config
    is still read, for a dimension the known table lacks.
    """
    folder = Path(name)
    if folder.is_dir():
        config_path: Path | None = folder / "config.json"
        revision = _local_fingerprint(folder)
    else:
        config_path = _cached_config(name)
        revision = ""
    config: dict[str, Any] = {}
    if config_path is not None and config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    return revision, config


def flag_version(revision: str) -> str:
    package = metadata.version("FlagEmbedding")
    return f"{package}@{revision}" if revision else package


def flag_embedder_identity(name: str = DEFAULT_FLAG_EMBEDDER) -> ModelIdentity:
    revision, config = flag_model_facts(name)
    # The known dimension first: it is the same before and after the weights are downloaded.
    dim = int(_KNOWN_DIMS.get(name) or config.get("hidden_size") or 0)
    return ModelIdentity(
        backend="flagembedding",
        model=name,
        version=flag_version(revision),
        dim=dim,
        note="BGEM3FlagModel dense vectors",
    )


def torch_device() -> str:
    """One explicit device: a list would make FlagEmbedding start a multi-process pool."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class LazyFlagModel:
    """A FlagEmbedding model loaded on first use on one device, with `load_s` recorded.
    A subclass names its `default_model`, how its identity is read (`identity_of`) and how
    the model is built (`_build`)."""

    default_model: ClassVar[str]
    identity_of: ClassVar[Callable[[str], ModelIdentity]]

    def __init__(
        self,
        model: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        device: str | None = None,
    ) -> None:
        self.model_name = self.default_model if model is None else model
        self.identity = self.identity_of(self.model_name)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device  # None: `torch_device()` when the model loads
        self.load_s = 0.0
        self._model: Any = None

    def _loaded(self) -> Any:
        """The model, built on the first call; load failures become a `ModelError`."""
        if self._model is not None:
            return self._model
        started = time.perf_counter()
        try:
            model = self._build(self.device or torch_device())
        except (OSError, ValueError) as exc:  # transformers: not found, no network, not a model
            raise ModelError(f"cannot load {self.model_name!r} with FlagEmbedding: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self._model = self._checked(model)
        return self._model

    def _device_options(self, device: str) -> dict[str, Any]:
        """Constructor options every FlagEmbedding model takes: half precision on a GPU."""
        return {
            "use_fp16": device.startswith("cuda"),
            "devices": device,
            "batch_size": self.batch_size,
        }

    def _build(self, device: str) -> Any:
        raise NotImplementedError

    def _checked(self, model: Any) -> Any:
        """The loaded model, once this class has checked it; as it is unless overridden."""
        return model


class FlagEmbedder(LazyFlagModel):
    """`Embedder` over `BGEM3FlagModel`; loads on first use and records `load_s`."""

    default_model = DEFAULT_FLAG_EMBEDDER
    identity_of = staticmethod(flag_embedder_identity)

    def _build(self, device: str) -> Any:
        from FlagEmbedding import BGEM3FlagModel

        return BGEM3FlagModel(
            self.model_name,
            **self._device_options(device),
            query_max_length=self.max_length,
            passage_max_length=self.max_length,
        )

    def _checked(self, model: Any) -> Any:
        loaded_dim = int(model.model.model.config.hidden_size)
        if self.identity.dim and loaded_dim != self.identity.dim:
            raise ModelError(
                f"{self.model_name} has {loaded_dim}-d vectors but identity says {self.identity}"
            )
        # Unknown before loading (a hub name not in the cache): take the real one now.
        self.identity = self.identity.model_copy(update={"dim": loaded_dim})
        return model

    def _embed(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.identity.dim), dtype=np.float32)
        model = self._loaded()
        encode = model.encode_queries if is_query else model.encode_corpus
        # FlagEmbedding batches internally (sorted by length, less padding) with this size.
        out = encode(
            texts,
            batch_size=self.batch_size,
            return_dense=True,
            return_sparse=False,
            return_colbert_vecs=False,
        )
        return unit_rows(out["dense_vecs"], self.identity.dim)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, is_query=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, is_query=True)
