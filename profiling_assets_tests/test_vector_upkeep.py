"""LanceDB upkeep: after many incremental writes the vector table stays small (versions,
fragments, bytes), is indexed on the filter columns, and retired tables can be dropped.

Real LanceDB tables; vectors are seeded random numbers (the model is not what is tested).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from profiling_assets.commands.cli import main
from profiling_assets.config import Settings
from profiling_assets.models.base import ModelIdentity
from profiling_assets.models.registry import embedder_identity
from profiling_assets.stores import vectors as vector_module
from profiling_assets.stores.vectors import VectorStore, table_name, vector_tables
from profiling_assets_tests.sample_runs import (
    UP_TO_EMBEDDINGS,
    add_cohorts,
    dated,
    profile_job,
    write_sample,
)

COHORT = "2025-01"
IDENTITY = ModelIdentity(backend="test", model="random", version="1", dim=8)
RUNS = 20


def _chunks(ids: list[str]) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame(
        {
            "chunk_id": ids,
            "user_id": [f"u{i % 3}" for i in range(n)],
            "cohort": [COHORT] * n,
            "heading_path": ["## 聊天记录"] * n,
            "text": [f"第{i}段" for i in range(n)],
        }
    )


def _incremental_runs(store: VectorStore, upkeep: bool) -> set[str]:
    """Each run: 5 new chunks upserted, the 2 oldest deleted, as edits to a cohort do."""
    rng = np.random.default_rng(7)
    live: list[str] = []
    for run in range(RUNS):
        new = [f"{run:04x}{i:012x}" for i in range(5)]
        store.upsert(_chunks(new), rng.random((len(new), IDENTITY.dim)))
        live = [*live, *new][2:]
        store.delete_absent(COHORT, set(live))
        if upkeep:
            store.upkeep(retention=timedelta(0))
    return set(live)


def test_twenty_incremental_runs_leave_a_bounded_indexed_table(tmp_path: Path) -> None:
    kept = VectorStore(tmp_path / "with", IDENTITY)
    live = _incremental_runs(kept, upkeep=True)
    health = kept.health()
    assert kept.cohort_ids(COHORT) == live  # upkeep never changes what is stored
    assert health.num_rows == len(live)
    assert health.num_versions <= 3
    assert health.num_fragments <= 2
    columns = {c for index in kept.table().list_indices() for c in index.columns}
    assert columns == {"cohort", "chunk_id"}

    grown = VectorStore(tmp_path / "without", IDENTITY)
    assert _incremental_runs(grown, upkeep=False) == live
    bare = grown.health()
    assert bare.num_versions >= 2 * RUNS  # one per upsert and one per delete
    assert bare.num_fragments >= RUNS // 2  # deletes drop only fully deleted fragments
    assert health.bytes_on_disk < bare.bytes_on_disk / 3


def test_the_default_retention_spares_versions_a_reader_may_still_use() -> None:
    assert vector_module.VERSION_RETENTION >= timedelta(minutes=1)


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Source → chunk_embeddings of one cohort through Dagster, three times (retention 0: no
    other process reads the table here)."""
    monkeypatch.setattr(vector_module, "VERSION_RETENTION", timedelta(0))
    settings = Settings(data_dir=tmp_path)
    cohort = dated(write_sample(settings.source_path, users=3, seed=4))[0]
    job = profile_job(settings)
    with dg.instance_for_test() as instance:
        add_cohorts(instance, [cohort])
        results = [
            job.execute_in_process(
                partition_key=cohort, instance=instance, asset_selection=UP_TO_EMBEDDINGS
            )
            for _ in range(3)
        ]
    return settings, results


def test_chunk_embeddings_reports_the_tables_health(embedded) -> None:
    _, results = embedded
    metadata = [r.asset_materializations_for_node("chunk_embeddings")[0].metadata for r in results]
    for entry in metadata:
        for key in ("lancedb_versions", "lancedb_fragments", "lancedb_bytes", "lancedb_rows"):
            assert isinstance(entry[key].value, int), key
    assert metadata[-1]["lancedb_versions"].value <= 3
    assert metadata[-1]["lancedb_fragments"].value == 1
    assert metadata[-1]["lancedb_indices"].value == 2


def test_prune_lists_retired_tables_first_and_drops_them_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path)
    monkeypatch.setenv("PROFILING_DATA_DIR", str(tmp_path))
    current = VectorStore(settings.lancedb_dir, embedder_identity(settings))
    retired = VectorStore(settings.lancedb_dir, IDENTITY)
    rng = np.random.default_rng(1)
    retired.upsert(_chunks(["00000000aaaa"]), rng.random((1, IDENTITY.dim)))
    current.table()
    both = sorted([current.name, retired.name])
    assert main(["vectors", "prune"]) == 0
    out = capsys.readouterr().out
    assert retired.name in out and current.name not in out
    assert vector_tables(settings.lancedb_dir) == both  # a dry run drops nothing
    assert main(["vectors", "prune", "--yes"]) == 0
    assert vector_tables(settings.lancedb_dir) == [table_name(embedder_identity(settings))]
    assert main(["vectors", "prune"]) == 0
    assert "no tables of retired embedders" in capsys.readouterr().out
