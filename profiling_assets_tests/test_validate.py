"""Typed validation of the source tables: every row accepted (typed) or rejected with a reason."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from profiling_assets.core.contract import (
    MAX_MESSAGE_CHARS,
    MAX_PLAUSIBLE_AMOUNT,
    SOURCE_TABLES,
    SourceContractError,
)
from profiling_assets.core.intake import UNASSIGNED_REASON, all_rejected, validate_cohort
from profiling_assets.core.validate import (
    REJECTED_SCHEMA,
    ValidationResult,
    check_columns,
    validate_table,
)

TODAY = date(2024, 6, 30)
COHORT = "2024-01"
_CJK = re.compile(r"[\u4e00-\u9fff]")

GOOD: dict[str, dict[str, Any]] = {
    "users": {
        "user_id": "u1",
        "gender": "女",
        "age": "30",
        "city": "上海",
        "signup_date": "2024-01-05",
        "cohort": None,
    },
    "sales": {
        "order_id": "o1",
        "user_id": "u1",
        "item": "全切双眼皮",
        "category": "医美项目",
        "amount": "7800",
        "order_date": "2024-02-01",
    },
    "behaviour": {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": "浏览文章",
        "target": "开眼角需不需要全麻？",
        "event_time": "2024-02-01 10:00:00",
    },
    "chat": {
        "message_id": "m1",
        "user_id": "u1",
        "message": "双眼皮有没有自然一点的方案？",
        "sent_at": "2024-02-01 10:05:00",
        "channel": "微信",
    },
}


def raw(table: str, *rows: dict[str, Any]) -> pl.DataFrame:
    """A raw table as a CSV source gives it: every column text (rows override the good row)."""
    full = [{**GOOD[table], **row} for row in rows]
    columns = list(dict.fromkeys(c for r in full for c in r))
    return pl.DataFrame(
        {c: [r.get(c) for r in full] for c in columns}, schema=dict.fromkeys(columns, pl.String)
    )


def check(result: ValidationResult, frame: pl.DataFrame, table: str) -> ValidationResult:
    """Invariants of every result: rows add up, each rejected row keeps its raw row once."""
    assert result.num_read == frame.height
    assert result.accepted.height + result.rejected.height == result.num_read
    assert result.rejected.schema == pl.Schema(REJECTED_SCHEMA)
    for row in result.rejected.iter_rows(named=True):
        assert row["table_name"] == table
        assert _CJK.search(row["reason"]), row["reason"]
        assert isinstance(json.loads(row["raw_row"]), dict)
    accepted_keys = Counter(result.accepted[SOURCE_TABLES[table].key].to_list())
    assert all(n == 1 for n in accepted_keys.values()), "an id is accepted at most once"
    return result


def run(table: str, *rows: dict[str, Any], known: set[str] | None = None) -> ValidationResult:
    frame = raw(table, *rows)
    if known is None and table != "users":
        known = {"u1"}
    result = validate_table(table, frame, COHORT, TODAY, known_user_ids=known)
    return check(result, frame, table)


def only_reason(result: ValidationResult) -> str:
    assert result.accepted.height == 0
    assert result.rejected.height == 1
    return result.rejected["reason"][0]


@pytest.mark.parametrize("table", list(GOOD))
def test_good_row_is_accepted_typed_with_cohort(table: str) -> None:
    result = run(table, {})
    assert result.rejected.height == 0
    accepted = result.accepted
    assert accepted.height == 1
    assert accepted["cohort"].to_list() == [COHORT]
    for column in SOURCE_TABLES[table].columns:
        expected = column.dtype if isinstance(column.dtype, pl.DataType) else column.dtype()
        assert accepted.schema[column.name] == expected, column.name


@pytest.mark.parametrize(
    ("table", "column"),
    [(t, c) for t, contract in SOURCE_TABLES.items() for c in contract.required],
)
def test_missing_required_column_names_table_and_column(table: str, column: str) -> None:
    frame = raw(table, {}).drop(column)
    with pytest.raises(SourceContractError) as error:
        validate_table(table, frame, COHORT, TODAY, known_user_ids={"u1"})
    assert repr(table) in str(error.value)
    assert column in str(error.value)
    with pytest.raises(SourceContractError, match=column):
        check_columns(table, frame.columns)


@pytest.mark.parametrize("table", list(GOOD))
def test_missing_optional_column_is_fine(table: str) -> None:
    optional = [c.name for c in SOURCE_TABLES[table].columns if not c.required]
    frame = raw(table, {}).drop(optional)
    result = check(validate_table(table, frame, COHORT, TODAY, {"u1"}), frame, table)
    assert result.accepted.height == 1
    assert all(result.accepted[c].is_null().all() for c in optional if c != "cohort")


@pytest.mark.parametrize("table", list(GOOD))
def test_extra_columns_are_ignored(table: str) -> None:
    result = run(table, {"notes": "随便写的备注", "ExtraCol": "1"})
    assert result.accepted.height == 1
    assert "notes" not in result.accepted.columns
    assert "ExtraCol" not in result.accepted.columns
    assert set(result.accepted.columns) == {*SOURCE_TABLES[table].names, "cohort"}


@pytest.mark.parametrize(
    ("table", "row", "reason"),
    [
        # unparseable dates and times
        ("users", {"signup_date": "2024/13/45"}, "字段 signup_date 无法解析为日期"),
        ("users", {"signup_date": "abc"}, "字段 signup_date 无法解析为日期"),
        ("users", {"signup_date": "2024-02-30"}, "字段 signup_date 无法解析为日期"),
        ("sales", {"order_date": "2024/13/45"}, "字段 order_date 无法解析为日期"),
        ("sales", {"order_date": "abc"}, "字段 order_date 无法解析为日期"),
        ("behaviour", {"event_time": "abc"}, "字段 event_time 无法解析为时间"),
        ("behaviour", {"event_time": "2024-13-01 10:00:00"}, "字段 event_time 无法解析为时间"),
        ("chat", {"sent_at": "2024/13/45"}, "字段 sent_at 无法解析为时间"),
        # future dates
        ("users", {"signup_date": "2099-01-01"}, "字段 signup_date 是未来日期"),
        ("users", {"signup_date": "2024-07-01"}, "字段 signup_date 是未来日期"),
        ("sales", {"order_date": "2030-05-05"}, "字段 order_date 是未来日期"),
        ("behaviour", {"event_time": "2024-07-01 00:00:00"}, "字段 event_time 是未来时间"),
        ("chat", {"sent_at": "2099-12-31 23:59:59"}, "字段 sent_at 是未来时间"),
        # null, empty and blank required values
        ("users", {"user_id": None}, "必填字段 user_id 为空"),
        ("users", {"user_id": ""}, "必填字段 user_id 为空"),
        ("users", {"user_id": "   "}, "必填字段 user_id 为空"),
        ("users", {"signup_date": None}, "必填字段 signup_date 为空"),
        ("sales", {"item": ""}, "必填字段 item 为空"),
        ("sales", {"amount": None}, "必填字段 amount 为空"),
        ("sales", {"order_id": None}, "必填字段 order_id 为空"),
        ("behaviour", {"target": None}, "必填字段 target 为空"),
        ("behaviour", {"event_type": " "}, "必填字段 event_type 为空"),
        ("chat", {"message": ""}, "必填字段 message 为空"),
        ("chat", {"user_id": None}, "必填字段 user_id 为空"),
        # wrong types
        ("sales", {"amount": "abc"}, "字段 amount 无法解析为数字"),
        ("sales", {"amount": "7,80"}, "字段 amount 无法解析为数字"),
        # negative and absurd amounts
        ("sales", {"amount": "-1"}, "金额超出合理范围"),
        ("sales", {"amount": "-0.01"}, "金额超出合理范围"),
        ("sales", {"amount": "1e9"}, "金额超出合理范围"),
        ("sales", {"amount": str(MAX_PLAUSIBLE_AMOUNT + 1)}, "金额超出合理范围"),
        # orphans: a user this cohort does not know
        ("sales", {"user_id": "ghost"}, "user_id 不属于本批次的已知用户"),
        ("behaviour", {"user_id": "ghost"}, "user_id 不属于本批次的已知用户"),
        ("chat", {"user_id": "ghost"}, "user_id 不属于本批次的已知用户"),
    ],
)
def test_bad_row_is_rejected_with_reason(table: str, row: dict[str, Any], reason: str) -> None:
    frame = raw(table, row)
    result = run(table, row)
    assert only_reason(result).startswith(reason)
    rejected = result.rejected.row(0, named=True)
    assert rejected["cohort"] == COHORT
    assert json.loads(rejected["raw_row"]) == frame.row(0, named=True)
    key = SOURCE_TABLES[table].key
    assert rejected["row_key"] == frame[key][0]


@pytest.mark.parametrize(
    ("table", "row"),
    [
        ("users", {"signup_date": "2024-06-30"}),  # today is not the future
        ("users", {"signup_date": "2024/01/05"}),
        ("users", {"signup_date": "2024.01.05"}),
        ("users", {"signup_date": "20240105"}),
        ("users", {"signup_date": " 2024-01-05 "}),
        ("users", {"user_id": " u1 "}),
        ("sales", {"amount": "0"}),
        ("sales", {"amount": str(MAX_PLAUSIBLE_AMOUNT)}),
        ("sales", {"amount": " 12.5 "}),
        ("sales", {"category": None}),
        ("behaviour", {"event_time": "2024-06-30 23:59:59"}),
        ("behaviour", {"event_time": "2024-02-01T10:00:00"}),
        ("behaviour", {"event_time": "2024-02-01"}),
        ("chat", {"sent_at": "2024/02/01 10:05:00"}),
        ("chat", {"sent_at": "2024-02-01 10:05"}),
        ("chat", {"channel": ""}),
    ],
)
def test_edge_values_that_are_fine(table: str, row: dict[str, Any]) -> None:
    result = run(table, row)
    assert result.rejected.height == 0, result.rejected["reason"].to_list()
    assert result.accepted.height == 1


def test_typed_source_columns_are_accepted() -> None:
    """A Parquet or DuckDB source brings real types, not text: they are cast, not rejected."""
    frame = pl.DataFrame(
        {
            "order_id": [1, 2],
            "user_id": ["u1", "u1"],
            "item": ["祛眼袋", "皮肤管理"],
            "category": ["医美项目", None],
            "amount": [5200, 398],
            "order_date": [date(2024, 1, 3), date(2024, 1, 28)],
        }
    )
    result = check(validate_table("sales", frame, COHORT, TODAY, {"u1"}), frame, "sales")
    assert result.rejected.height == 0
    assert result.accepted["order_id"].to_list() == ["1", "2"]
    assert result.accepted["amount"].to_list() == [5200.0, 398.0]
    assert result.accepted["order_date"].to_list() == [date(2024, 1, 3), date(2024, 1, 28)]


def test_datetime_source_for_date_column_and_future_datetime() -> None:
    frame = pl.DataFrame(
        {
            "event_id": ["e1", "e2"],
            "user_id": ["u1", "u1"],
            "event_type": ["浏览视频", "浏览视频"],
            "target": ["双眼皮修复案例", "未来的视频"],
            "event_time": [datetime(2024, 2, 1, 9), datetime(2025, 1, 1)],
        }
    )
    result = check(validate_table("behaviour", frame, COHORT, TODAY, {"u1"}), frame, "behaviour")
    assert result.accepted["event_id"].to_list() == ["e1"]
    assert result.rejected["reason"].to_list() == ["字段 event_time 是未来时间"]


def test_first_failure_wins() -> None:
    result = run("sales", {"item": None, "amount": "-5", "user_id": "ghost"})
    assert only_reason(result) == "必填字段 item 为空"


def test_duplicate_ids_with_same_content_keep_the_first() -> None:
    frame = raw("sales", {}, {"order_id": "o2"}, {}, {})
    result = check(validate_table("sales", frame, COHORT, TODAY, {"u1"}), frame, "sales")
    assert result.accepted["order_id"].to_list() == ["o1", "o2"]
    assert result.rejected["row_key"].to_list() == ["o1", "o1"]
    assert set(result.rejected["reason"]) == {"order_id 重复（完全相同的记录，保留第一条）"}


def test_duplicate_ids_with_same_content_after_trimming_are_copies() -> None:
    result = run("users", {}, {"user_id": " u1 ", "city": "上海 "})
    assert result.accepted.height == 1
    assert result.rejected["reason"].to_list() == ["user_id 重复（完全相同的记录，保留第一条）"]


def test_duplicate_ids_with_different_content_are_all_rejected() -> None:
    result = run("sales", {}, {"amount": "7900"}, {"order_id": "o2"}, {})
    assert result.accepted["order_id"].to_list() == ["o2"]
    assert result.rejected.height == 3
    assert set(result.rejected["reason"]) == {"order_id 重复且内容不同"}
    amounts = sorted(json.loads(r)["amount"] for r in result.rejected["raw_row"])
    assert amounts == ["7800", "7800", "7900"]


def test_an_invalid_copy_does_not_make_its_valid_twin_a_conflict() -> None:
    result = run("sales", {"amount": "abc"}, {})
    assert result.accepted.height == 1
    assert result.accepted["amount"].to_list() == [7800.0]
    assert result.rejected["reason"].to_list() == ["字段 amount 无法解析为数字"]


@pytest.mark.parametrize("age", ["abc", "150", "-3", "30.5岁", "999999999999999999999"])
def test_bad_optional_age_is_nulled_and_counted_not_rejected(age: str) -> None:
    result = run("users", {}, {"user_id": "u2", "age": age})
    assert result.rejected.height == 0
    assert result.accepted["age"].to_list() == [30, None]
    assert result.num_nulled == 1


@pytest.mark.parametrize("age", [None, "", "  "])
def test_absent_optional_age_is_not_counted_as_nulled(age: str | None) -> None:
    result = run("users", {"age": age})
    assert result.accepted["age"].to_list() == [None]
    assert result.num_nulled == 0


@pytest.mark.parametrize(("age", "expected"), [("0", 0), ("120", 120), (" 28 ", 28)])
def test_age_bounds(age: str, expected: int) -> None:
    result = run("users", {"age": age})
    assert result.accepted["age"].to_list() == [expected]
    assert result.num_nulled == 0


def test_long_message_is_truncated_and_counted() -> None:
    long = "很长的发言" * 20_000  # 100k characters
    result = run("chat", {"message": long}, {"message_id": "m2"})
    assert result.rejected.height == 0
    assert result.num_truncated == 1
    lengths = result.accepted["message"].str.len_chars().to_list()
    assert lengths == [MAX_MESSAGE_CHARS, len(GOOD["chat"]["message"])]
    assert result.accepted["message"][0] == long[:MAX_MESSAGE_CHARS]


def test_raw_row_json_keeps_extra_columns_and_unicode() -> None:
    result = run("chat", {"message": "", "extra": "😀 emoji"})
    row = json.loads(result.rejected["raw_row"][0])
    assert row["extra"] == "😀 emoji"
    assert "😀" in result.rejected["raw_row"][0]  # not \\u-escaped


def test_mixed_batch_adds_up() -> None:
    rows = [
        {},
        {"order_id": "o2", "amount": "-1"},
        {"order_id": "o3", "order_date": "abc"},
        {"order_id": "o4", "user_id": "ghost"},
        {"order_id": "o5"},
        {"order_id": "o5"},
        {"order_id": "o6", "amount": "1"},
        {"order_id": "o6", "amount": "2"},
        {"order_id": None},
    ]
    result = run("sales", *rows)
    assert result.accepted["order_id"].to_list() == ["o1", "o5"]
    assert result.rejected.height == 7


def cohort_raw(users: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {
        "users": users,
        "sales": raw("sales", {}, {"order_id": "o2", "user_id": "u2"}),
        "behaviour": raw("behaviour", {}),
        "chat": raw("chat", {}, {"message_id": "m2", "user_id": "ghost"}),
    }


def test_validate_cohort_checks_events_against_accepted_users() -> None:
    users = raw("users", {}, {"user_id": "u2", "signup_date": "abc"})
    results = validate_cohort(cohort_raw(users), COHORT, TODAY)
    tables = cohort_raw(users)
    for table, result in results.items():
        check(result, tables[table], table)
    assert results["users"].accepted["user_id"].to_list() == ["u1"]
    assert results["sales"].accepted["order_id"].to_list() == ["o1"]
    assert results["sales"].rejected["reason"].to_list() == ["user_id 不属于本批次的已知用户"]
    assert results["chat"].accepted["message_id"].to_list() == ["m1"]
    everything = all_rejected(results)
    assert everything.height == sum(r.rejected.height for r in results.values())
    assert sorted(everything["table_name"]) == ["chat", "sales", "users"]


def test_validate_cohort_unassigned_rejects_every_user_row_with_a_reason() -> None:
    users = raw(
        "users",
        {},
        {},  # an exact copy
        {"user_id": " u2 "},  # padded id
        {"user_id": "u3", "signup_date": "abc"},  # bad on its own: keeps its own reason
        {"user_id": "u4", "cohort": "a'b"},
    )
    tables = cohort_raw(users)
    results = validate_cohort(tables, "unassigned", TODAY, unassigned=True)
    for table, result in results.items():
        check(result, tables[table], table)
        assert result.accepted.height == 0, table
    rejected = results["users"].rejected
    assert rejected.height == users.height
    # every raw users row lands in rejected_rows exactly once
    assert Counter(rejected["raw_row"]) == Counter(
        json.dumps(r, ensure_ascii=False) for r in users.iter_rows(named=True)
    )
    reasons = {
        json.loads(row)["user_id"]: reason
        for row, reason in zip(rejected["raw_row"], rejected["reason"], strict=True)
    }
    assert reasons["u3"] == "字段 signup_date 无法解析为日期"
    assert reasons[" u2 "] == UNASSIGNED_REASON
    assert reasons["u4"] == UNASSIGNED_REASON
    assert set(rejected["cohort"]) == {"unassigned"}


def test_validate_cohort_unassigned_with_no_users() -> None:
    users = raw("users", {}).clear()
    tables = cohort_raw(users)
    results = validate_cohort(tables, "unassigned", TODAY, unassigned=True)
    for table, result in results.items():
        check(result, tables[table], table)
        assert result.accepted.height == 0
    assert results["sales"].rejected.height == 2


def test_a_cohort_read_table_by_table_validates_as_when_read_at_once(tmp_path: Path) -> None:
    """Intake reads each raw table when the validator asks for it (one raw table held at a
    time); what it accepts and rejects is the same as from the tables read up front."""
    from profiling_assets.core.contract import SOURCE_TABLES
    from profiling_assets.stores.source import (
        CohortTables,
        list_cohorts,
        open_source,
        read_cohort_table,
    )
    from profiling_assets.synth import generate_tables, write_source

    source = tmp_path / "source.duckdb"
    write_source(source, generate_tables(users=40, seed=21, months=1))
    asked: list[str] = []

    class Counting(CohortTables):
        def __getitem__(self, table: str) -> pl.DataFrame:
            asked.append(table)
            return super().__getitem__(table)

    with open_source(source) as con:
        cohort = list_cohorts(con)[0]
        up_front = {t: read_cohort_table(con, t, cohort, True) for t in SOURCE_TABLES}
        expected = validate_cohort(up_front, cohort, date(2026, 1, 1))
        lazily = validate_cohort(Counting(con, cohort, True), cohort, date(2026, 1, 1))
    assert sorted(asked) == sorted(SOURCE_TABLES)  # each table read once
    for table in SOURCE_TABLES:
        assert lazily[table].accepted.equals(expected[table].accepted)
        assert lazily[table].num_read == expected[table].num_read > 0
        assert expected[table].accepted.height > 0
    assert all_rejected(lazily).equals(all_rejected(expected))
    assert all_rejected(expected).height > 0  # the generator plants rows to reject
