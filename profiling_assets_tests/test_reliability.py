"""Reliability: a corpus of bad rows through the real reader and validator (DuckDB file and CSV
folder), and failing model servers (real local HTTP servers) under the `user_profiles` asset."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest

from profiling_assets.config import Settings
from profiling_assets.core.contract import MAX_MESSAGE_CHARS, SOURCE_TABLES, SourceContractError
from profiling_assets.core.lint import lint_document
from profiling_assets.models.base import ModelError
from profiling_assets.models.embed_ollama import OllamaEmbedder
from profiling_assets.pipeline import build_definitions
from profiling_assets.stores.source import UNASSIGNED_COHORT, list_cohorts, open_source
from profiling_assets_tests import bad_inputs as corpus
from profiling_assets_tests.ollama_like import OllamaLike
from profiling_assets_tests.sample_runs import cohort_instance, ollama_settings
from profiling_assets_tests.source_intake import intake

TABLES = tuple(SOURCE_TABLES)
CLOSED_PORT_URL = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once


# -- 1. bad-input corpus through the real source reader and validation ----------------------


@pytest.fixture(scope="module", params=["duckdb", "csv"])
def corpus_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"corpus-{request.param}")
    if request.param == "duckdb":
        return request.param, corpus.write_duckdb(root / "source.duckdb")
    return request.param, corpus.write_csv_folder(root / "source")


def test_every_bad_row_lands_where_expected(corpus_source: tuple[str, Path]) -> None:
    kind, source = corpus_source
    results = intake(source)
    assert set(results) == {corpus.COHORT, corpus.FUTURE_COHORT, UNASSIGNED_COHORT}
    tried = landed_total = 0
    for table in TABLES:
        key = SOURCE_TABLES[table].key
        landed: list[tuple[str, bool, str | None, str, str]] = []  # cohort, ok, key, reason, raw
        for cohort, by_table in results.items():
            result = by_table[table]
            landed += [(cohort, True, k, "", "") for k in result.accepted[key].to_list()]
            landed += [
                (cohort, False, r["row_key"], r["reason"], r["raw_row"])
                for r in result.rejected.iter_rows(named=True)
            ]
        unused = list(landed)
        for marker, expect in corpus.expected_rows(table, csv_source=kind == "csv"):
            tried += 1
            match = next(
                (
                    item
                    for item in unused
                    if item[0] == expect.cohort
                    and item[1] == expect.accepted
                    and expect.reason in item[3]
                    and (item[2] == marker if item[2] is not None else marker in item[4])
                ),
                None,
            )
            assert match is not None, (table, marker, expect, landed)
            # A malformed record that swallowed several lines stands for all of them.
            if not (match[2] is None and corpus.MALFORMED_REASON in match[3]):
                unused.remove(match)
        leftover = [u for u in unused if corpus.MALFORMED_REASON not in u[3]]
        assert leftover == [], (table, leftover)
        landed_total += len(landed)
    print(json.dumps({"source": kind, "rows_tried": tried, "rows_landed": landed_total}))


def test_accepted_plus_rejected_is_read_per_table_and_partition(
    corpus_source: tuple[str, Path],
) -> None:
    kind, source = corpus_source
    results = intake(source)
    for table in TABLES:
        for result in (by_table[table] for by_table in results.values()):
            assert result.accepted.height + result.rejected.height == result.num_read
        total_read = sum(by_table[table].num_read for by_table in results.values())
        lines = corpus.num_source_records(table, csv_source=kind == "csv")
        malformed_span = 0
        if kind == "csv":
            # The malformed record of an unclosed quote holds several planted lines.
            rejected = results[UNASSIGNED_COHORT][table].rejected
            spans = [
                json.loads(r)["csv_line"].count("\n")
                for r, reason in rejected.select("raw_row", "reason").rows()
                if corpus.MALFORMED_REASON in reason
            ]
            malformed_span = sum(spans)
        assert total_read + malformed_span == lines, table


def test_special_text_is_kept_and_long_messages_are_cut(corpus_source: tuple[str, Path]) -> None:
    _, source = corpus_source
    chat = intake(source)[corpus.COHORT]["chat"]
    accepted = dict(chat.accepted.select("message_id", "message").rows())
    assert chat.num_truncated == 1
    assert len(accepted["m1"]) == MAX_MESSAGE_CHARS
    assert corpus.EMOJI_TEXT in accepted["m2"] and corpus.MIXED_TEXT in accepted["m2"]
    assert accepted["m3"] == corpus.MARKDOWN_TEXT.strip()


def test_unclosed_quote_at_the_end_of_a_csv_is_a_clear_error(tmp_path: Path) -> None:
    folder = corpus.write_csv_folder(tmp_path / "source", malformed=False)
    with (folder / "chat.csv").open("a", encoding="utf-8") as f:
        f.write('m80,u1,"从这里开始引号没有闭合,2024-02-01 10:00:00\n')
        f.write("m81,u1,这一行会被吞掉,2024-02-01 10:00:00\n")
    with pytest.raises(SourceContractError, match=r"chat\.csv: \d+ data lines, but only"):
        with open_source(folder):
            pass


def test_corpus_through_dagster_every_partition_succeeds(tmp_path: Path) -> None:
    """One bad row never fails a cohort: intake, documents and chunks of every partition
    succeed, every check passes and the warehouse holds each row once."""
    from profiling_assets.assets.documents import build_document_assets
    from profiling_assets.assets.raw import build_raw_assets
    from profiling_assets.core.spec import load_spec

    settings = Settings(data_dir=tmp_path, source=corpus.write_csv_folder(tmp_path / "source"))
    with open_source(settings.source_path) as con:
        cohorts = list_cohorts(con)
    instance = cohort_instance(cohorts)
    resources = build_definitions(settings).resources
    documents_assets = build_document_assets(settings, load_spec("clinic"))
    for cohort in cohorts:
        result = dg.materialize(
            [build_raw_assets(settings, load_spec("clinic")), *documents_assets],
            partition_key=cohort,
            instance=instance,
            resources=resources,
        )
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == len(TABLES) + 1 and all(c.passed for c in checks), cohort
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        stored = {
            t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]
            for t in (*TABLES, "rejected_rows")
        }
        docs = con.execute("SELECT user_id, markdown FROM user_documents").fetchall()
    results = intake(settings.source_path)
    assert stored["rejected_rows"] == sum(
        r.rejected.height for by_table in results.values() for r in by_table.values()
    )
    for table in TABLES:
        assert stored[table] == sum(
            by_table[table].accepted.height for by_table in results.values()
        )
    assert sorted(u for u, _ in docs) == ["u1", "u10", "u11", "u2"]
    for _, markdown in docs:
        assert lint_document(markdown) == []
        assert "\x00" not in markdown and "\u202e" not in markdown


# -- 4. model faults: real misbehaving local servers under `user_profiles` ------------------

FAULT_USERS = 4


def run_profiles(data: Path, cohort: str, host: str, **overrides: Any):
    options: dict[str, Any] = {
        "llm_timeout_s": 1.0,
        "llm_max_retries": 1,
        "llm_parallel": FAULT_USERS,
        "llm_step_retries": 0,  # a Dagster step retry would only meet the same fault here
    }
    settings = ollama_settings(data, host, **(options | overrides))
    instance = cohort_instance([cohort])
    started = time.perf_counter()
    result = corpus.run_job(settings, cohort, instance, only="user_profiles", raise_on_error=False)
    return result, time.perf_counter() - started


def failures_of(data: Path, run_id: str) -> pl.DataFrame:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(
            "SELECT user_id, reason, attempts FROM profile_failures WHERE run_id = ?",
            params=[run_id],
        ).pl()


@pytest.fixture
def fault_data(evidence_copy: Callable[[int], tuple[Path, str]]) -> tuple[Path, str]:
    """A data dir of its own with everything up to `profile_evidence` done; its cohort."""
    return evidence_copy(FAULT_USERS)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unreachable", "模型调用失败"),
        ("slow", "timed out"),
        ("error500", "HTTP 500"),
        ("garbage", "模型调用失败"),
        ("drop", "模型调用失败"),
        ("cutoff", "模型调用失败"),
    ],
)
def test_transport_fault_is_recorded_per_user_and_fails_the_step(
    fault_data: tuple[Path, str], mode: str, reason: str
) -> None:
    from profiling_assets.core.profiling.stored import open_failures

    data, cohort = fault_data
    answer = corpus.profile_answer
    with OllamaLike(models=("qwen-test",), chat_handler=answer, slow_s=1.5) as server:
        if mode != "unreachable":
            server.mode = mode  # type: ignore[assignment]
        host = CLOSED_PORT_URL if mode == "unreachable" else server.url
        result, seconds = run_profiles(data, cohort, host)
        chats = len(server.requests_to("/api/chat"))
    # Issue 12: a server that answered no user at all is an outage, not a cohort of failed
    # users: the step fails (red run, Dagster's retry policy applies) after writing them.
    assert not result.success
    failed = failures_of(data, result.run_id)
    assert failed.height == FAULT_USERS
    assert failed["attempts"].to_list() == [2] * FAULT_USERS  # max_retries=1: bounded
    assert all(reason in r for r in failed["reason"]), failed["reason"].to_list()
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        kinds = con.execute("SELECT DISTINCT kind FROM profile_failures").fetchall()
        profiles = con.sql("SELECT * FROM user_profiles").pl()
        stored = con.sql("SELECT * FROM profile_failures").pl()
    assert kinds == [("transport",)]
    description, meta = corpus.step_failure(result, "user_profiles")
    assert "传输错误" in description
    assert meta["num_failed"] == FAULT_USERS and meta["num_retries"] == FAULT_USERS
    assert meta["num_failed_transport"] == FAULT_USERS
    # What the failure-rate check reports for the cohort (the step failed, so it did not run).
    open_now, tried = open_failures(profiles, stored, str(meta["llm_identity"]))
    assert open_now.height / tried == 1.0
    assert chats == (0 if mode == "unreachable" else 2 * FAULT_USERS)
    assert seconds < 25
    print(json.dumps({"mode": mode, "seconds": round(seconds, 1), "chat_requests": chats}))


def test_bad_answers_fail_one_user_and_the_run_goes_on(fault_data: tuple[Path, str]) -> None:
    """Per user: invalid JSON, a schema violation, an answer cut off by max_tokens, or fine."""
    data, cohort = fault_data
    users: list[str] = []
    valid = corpus.generic_profile_json()
    bad = json.loads(valid)
    bad["purchase_intent"]["probability"] = 7

    def handler(body: dict[str, Any]) -> dict[str, Any]:
        user = corpus.prompt_user_id(body)
        if user not in users:
            users.append(user)
        match users.index(user):
            case 0:
                return corpus.chat_reply(body, '{"tags": {"value": [不是 JSON')
            case 1:
                return corpus.chat_reply(body, json.dumps(bad, ensure_ascii=False))
            case 2:
                return corpus.chat_reply(body, valid[: len(valid) // 2], done_reason="length")
        return corpus.chat_reply(body, valid)

    with OllamaLike(models=("qwen-test",), chat_handler=handler) as server:
        result, seconds = run_profiles(data, cohort, server.url, llm_parallel=1)
    assert result.success
    failed = dict(failures_of(data, result.run_id).select("user_id", "reason").rows())
    assert set(failed) == set(users[:3])
    assert "合法 JSON" in failed[users[0]]
    assert "不符合模式" in failed[users[1]]
    assert "截断" in failed[users[2]]
    meta = corpus.materialized(result, "user_profiles")
    assert meta["num_profiles"] == FAULT_USERS - 3 and meta["num_failed"] == 3
    check = corpus.check_result(result, "profile_failure_rate")
    assert not check.passed and check.metadata["num_failed"].value == 3
    assert seconds < 25


@pytest.mark.parametrize("mode", ["unreachable", "drop", "slow", "cutoff", "error500"])
def test_embedding_server_fault_is_a_clear_model_error_without_hanging(mode: str) -> None:
    with OllamaLike(models=("bge-m3",), slow_s=3.0) as server:
        host = CLOSED_PORT_URL if mode == "unreachable" else server.url
        embedder = OllamaEmbedder("bge-m3", host, timeout_s=1.0, connect_timeout_s=1.0)
        assert embedder.identity.dim  # asked while healthy (or falls back on a closed port)
        if mode != "unreachable":
            server.mode = mode  # type: ignore[assignment]
        started = time.perf_counter()
        with pytest.raises(ModelError) as raised:
            embedder.embed_passages(["双眼皮价格"])
        seconds = time.perf_counter() - started
    assert seconds < 5
    expected = {
        "unreachable": "unreachable",
        "slow": "timed out",
        "error500": "HTTP 500",
        "drop": "transport error: RemoteProtocolError('Server disconnected",
        "cutoff": "transport error: RemoteProtocolError('peer closed connection",
    }
    assert expected[mode] in str(raised.value), str(raised.value)
