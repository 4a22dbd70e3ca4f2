"""The setup the pipeline tests share: a generated sample source on disk, a Dagster instance
that knows its cohorts, the profile job run once per cohort, and the settings or environment
that point the LLM at an Ollama-speaking test server (`OllamaLike`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import polars as pl

from profiling_assets.config import Settings
from profiling_assets.pipeline import PROFILE_JOB, build_definitions
from profiling_assets.stores.source import UNASSIGNED_COHORT, list_cohorts, open_source
from profiling_assets.synth import write_source
from profiling_assets.synth.sample import sample_tables

TEST_LLM = "qwen-test"  # the model name the test servers answer to
# The assets of a cohort up to its vectors, and up to the evidence ranked from them.
UP_TO_EMBEDDINGS = [
    dg.AssetKey(k)
    for k in (
        *("users", "sales", "behaviour", "chat", "rejected_rows"),
        *("user_documents", "document_chunks", "chunk_embeddings"),
    )
]
UP_TO_EVIDENCE = [*UP_TO_EMBEDDINGS, dg.AssetKey("profile_evidence")]


def write_tables(path: Path, tables: dict[str, pl.DataFrame]) -> list[str]:
    """`tables` written as the source at `path`; the cohorts it holds, `unassigned` included."""
    write_source(path, tables)
    with open_source(path) as con:
        return list_cohorts(con)


def write_sample(
    path: Path, users: int, seed: int, months: int = 1, spec: str | None = None
) -> list[str]:
    """The generated sample of `spec` (the clinic when None) written to `path`; its cohorts."""
    return write_tables(path, sample_tables(spec, users=users, seed=seed, months=months))


def dated(cohorts: Iterable[str]) -> list[str]:
    """The cohorts without `unassigned` (it holds only rows that name no usable cohort)."""
    return [c for c in cohorts if c != UNASSIGNED_COHORT]


def add_cohorts(instance: dg.DagsterInstance, cohorts: Iterable[str]) -> dg.DagsterInstance:
    """`instance`, now knowing `cohorts` as partitions of the profile job."""
    instance.add_dynamic_partitions("cohort", list(cohorts))
    return instance


def cohort_instance(cohorts: Iterable[str]) -> dg.DagsterInstance:
    """A fresh in-memory instance that knows `cohorts` as partitions."""
    return add_cohorts(dg.DagsterInstance.ephemeral(), cohorts)


def profile_job(settings: Settings) -> dg.JobDefinition:
    """The job that builds every asset of one cohort, as `settings` configure it."""
    return build_definitions(settings).resolve_job_def(PROFILE_JOB)


def run_cohorts(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    cohorts: Iterable[str],
    asset_selection: list[dg.AssetKey] | None = None,
) -> dict[str, dg.ExecuteInProcessResult]:
    """`job` run once per cohort, in order, on `instance`; each cohort's result (a failed
    step raises)."""
    return {
        cohort: job.execute_in_process(
            partition_key=cohort, instance=instance, asset_selection=asset_selection
        )
        for cohort in cohorts
    }


def ollama_settings(data_dir: Path, host: str, **overrides: object) -> Settings:
    """Settings whose LLM is the test model behind the Ollama-speaking server at `host`."""
    options: dict[str, object] = {
        "llm_backend": "ollama",
        "llm_model": TEST_LLM,
        "ollama_host": host,
    }
    return Settings(data_dir=data_dir, **(options | overrides))  # type: ignore[arg-type]


def ollama_env(data_dir: Path, host: str, model: str = TEST_LLM) -> dict[str, str]:
    """The same as `ollama_settings`, as the PROFILING_* variables a CLI command or a code
    location reads."""
    return {
        "PROFILING_DATA_DIR": str(data_dir),
        "PROFILING_LLM_BACKEND": "ollama",
        "PROFILING_LLM_MODEL": model,
        "PROFILING_OLLAMA_HOST": host,
    }
