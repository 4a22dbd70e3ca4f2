"""A corpus of bad source rows, each with where it must end up, written as a DuckDB file or a
CSV folder (the CSV folder also gets lines that are not well-formed CSV).

Every planted row has a unique id in its table's key column (or, for malformed CSV lines, a
unique marker in the line), and an `Expect`: accepted into a cohort, or rejected in a cohort
with a reason containing a given phrase. Tests read the source through the real reader and
validator and check every expectation, plus accepted + rejected = read per table and cohort.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import lancedb
import polars as pl

from profiling_assets.config import Settings
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.pipeline import PROFILE_JOB, build_definitions

COHORT = "2024-01"
FUTURE_COHORT = "2999-01"
UNASSIGNED = "unassigned"
LONG_MESSAGE_CHARS = 100_000

CONTROL_TEXT = "\x00响\x07铃\x1b[31m红\x1b[0m\u202e反转\u200b零宽\ufeff"
EMOJI_TEXT = "想做🌸玻尿酸💉，价格🤔？"
MIXED_TEXT = "Botox 肉毒素 ボトックス 보톡스 ботокс — is it safe? 安全吗"
MARKDOWN_TEXT = (
    "## 我是标题\n# 一级\n```python\nprint('x')\n```\n| a | b |\n|---|---|\n"
    "> 引用 **粗体** [链接](http://example.com) <script>alert(1)</script>\n- 列表\n1. 有序"
)
SQL_COHORT = "2024-01'; DROP TABLE users; --"


@dataclass(frozen=True)
class Expect:
    cohort: str
    accepted: bool
    reason: str = ""  # a phrase the rejection reason contains


def _accept(cohort: str = COHORT) -> Expect:
    return Expect(cohort, True)


def _reject(reason: str, cohort: str = COHORT) -> Expect:
    return Expect(cohort, False, reason)


def _user(uid: str | None, **over: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        "user_id": uid,
        "gender": "女",
        "age": "30",
        "city": "上海",
        "signup_date": "2024-01-05",
        "cohort": None,
    }
    return row | over


def _order(oid: str, uid: str | None = "u1", **over: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        "order_id": oid,
        "user_id": uid,
        "item": "水光针",
        "category": "皮肤项目",
        "amount": "980",
        "order_date": "2024-02-01",
        "note": "额外列",  # a column the contract does not know
    }
    return row | over


def _event(eid: str, uid: str = "u1", **over: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        "event_id": eid,
        "user_id": uid,
        "event_type": "浏览文章",
        "target": "热玛吉能维持多久？",
        "event_time": "2024-02-01 10:00:00",
    }
    return row | over


def _msg(mid: str, uid: str | None = "u1", **over: str | None) -> dict[str, str | None]:
    # No `channel` column at all: an optional column missing from the source.
    row: dict[str, str | None] = {
        "message_id": mid,
        "user_id": uid,
        "message": "双眼皮有没有自然一点的方案？",
        "sent_at": "2024-02-01 10:05:00",
    }
    return row | over


# (row, expectation) per table. Duplicates share their key; expectations for a duplicated key
# are listed once per row in order.
CORPUS: dict[str, list[tuple[dict[str, str | None], Expect]]] = {
    "users": [
        (_user("u1"), _accept()),
        (_user("u1"), _reject("完全相同")),  # exact copy: first kept
        (_user("u2", city=EMOJI_TEXT, gender=CONTROL_TEXT), _accept()),
        (_user("u3", cohort=SQL_COHORT), _reject("无法确定所属批次", UNASSIGNED)),
        (_user("u4", cohort="../../etc/passwd"), _reject("无法确定所属批次", UNASSIGNED)),
        (_user("u5", cohort="a/b"), _reject("无法确定所属批次", UNASSIGNED)),
        (_user("u6", cohort='vip"quoted"'), _reject("无法确定所属批次", UNASSIGNED)),
        (_user("u7", signup_date="not-a-date"), _reject("signup_date 无法解析", UNASSIGNED)),
        (_user("u8", signup_date="2999-01-03"), _reject("未来日期", FUTURE_COHORT)),
        (_user("u9", city="北京"), _reject("重复且内容不同")),
        (_user("u9", city="广州"), _reject("重复且内容不同")),
        (_user("u10", age="abc"), _accept()),  # bad optional value: nulled, not rejected
        (_user("u11", age="-3", gender=""), _accept()),
        (_user(None, city=MIXED_TEXT), _reject("必填字段 user_id 为空", UNASSIGNED)),
    ],
    "sales": [
        (_order("o1"), _accept()),
        (_order("o2", amount="-5"), _reject("金额超出")),
        (_order("o3", amount="99999999"), _reject("金额超出")),
        (_order("o4", amount="abc"), _reject("无法解析为数字")),
        (_order("o5", order_date="2024-13-45"), _reject("无法解析为日期")),
        (_order("o6", order_date="2999-01-01"), _reject("未来日期")),
        (_order("o7", item=""), _reject("必填字段 item 为空")),
        (_order("o8", item=None), _reject("必填字段 item 为空")),
        (_order("o9", uid="ghost"), _reject("不属于本批次", UNASSIGNED)),  # orphan
        (_order("o10"), _accept()),
        (_order("o10"), _reject("完全相同")),
        (_order("o11", amount="100"), _reject("重复且内容不同")),
        (_order("o11", amount="200"), _reject("重复且内容不同")),
        (_order("o12", item=MARKDOWN_TEXT), _accept()),
        (_order("o13", uid="u2", item=MIXED_TEXT, amount="0"), _accept()),
        (_order("o14", uid="u3"), _reject("不属于本批次", UNASSIGNED)),
        (_order("o15", amount="1e400"), _reject("金额超出")),  # parses as inf
        (_order("o16", amount="NaN"), _reject("金额超出")),  # NaN compares above any bound
    ],
    "behaviour": [
        (_event("e1"), _accept()),
        (_event("e2", event_time="yesterday"), _reject("无法解析为时间")),
        (_event("e3", event_time="2999-01-01 00:00:00"), _reject("未来时间")),
        (_event("e4", target=None), _reject("必填字段 target 为空")),
        (_event("e5", uid="u2", target=CONTROL_TEXT), _accept()),
        (_event("e6", uid="ghost"), _reject("不属于本批次", UNASSIGNED)),
        (_event("e7", target=MARKDOWN_TEXT), _accept()),
        (_event("e8", event_time="2024-02-01"), _accept()),  # a date where a time is due
        (_event("e9", event_type="   "), _reject("必填字段 event_type 为空")),
    ],
    "chat": [
        (_msg("m1", message="长" * LONG_MESSAGE_CHARS), _accept()),
        (_msg("m2", message=CONTROL_TEXT + EMOJI_TEXT + MIXED_TEXT), _accept()),
        (_msg("m3", message=MARKDOWN_TEXT), _accept()),
        (_msg("m4", message=""), _reject("必填字段 message 为空")),
        (_msg("m5", sent_at="2024-02-30 10:00:00"), _reject("无法解析为时间")),
        (_msg("m6", message="第一版"), _reject("重复且内容不同")),
        (_msg("m6", message="第二版"), _reject("重复且内容不同")),
        (_msg("m7", uid="u3"), _reject("不属于本批次", UNASSIGNED)),
        (_msg("m8", uid="u2", message="😀" * 50), _accept()),
        (_msg("m9", uid=None), _reject("必填字段 user_id 为空", UNASSIGNED)),
    ],
}

# Lines appended to the CSV files only: (table, text, marker, expectation). A marker is the
# line's key, found in the accepted rows or inside the rejected raw row.
MALFORMED_REASON = "CSV 第"
MALFORMED_LINES: list[tuple[str, str, str, Expect]] = [
    (
        "sales",
        "o90,u1,面膜,补水,皮肤项目,100,2024-02-01,多出来",  # unquoted commas: too many fields
        "o90",
        _reject(MALFORMED_REASON, UNASSIGNED),
    ),
    (
        "sales",
        'o91,u1,"玻尿酸"填充,皮肤项目,100,2024-02-01,x',  # text after a closing quote
        "o91",
        _reject(MALFORMED_REASON, UNASSIGNED),
    ),
    ("sales", "o92,u1,面膜", "o92", _reject("必填字段 amount 为空")),  # too few: padded
    ("behaviour", "e90,u1", "e90", _reject("必填字段 event_type 为空")),
    (
        "chat",
        'm90,u1,"他说""你好""，然后\n换行了",2024-02-01 10:00:00',  # well-formed, multi-line
        "m90",
        _accept(),
    ),
    # A quote never closed swallows lines up to the next quote: all of them are one malformed
    # record (kept whole in its raw row), and reading resumes after it.
    (
        "chat",
        'm91,u1,"没有闭合的引号,2024-02-01 10:00:00',
        "m91",
        _reject(MALFORMED_REASON, UNASSIGNED),
    ),
    (
        "chat",
        "m92,u1,被吞掉的一行,2024-02-01 10:00:00",
        "m92",
        _reject(MALFORMED_REASON, UNASSIGNED),
    ),
    (
        "chat",
        'm93,u1,"引号在这里闭合",2024-02-01 10:00:00',
        "m93",
        _reject(MALFORMED_REASON, UNASSIGNED),
    ),
    ("chat", "m94,u1,读取恢复,2024-02-01 10:00:00", "m94", _accept()),
]


def frames() -> dict[str, pl.DataFrame]:
    """The corpus as all-text frames (columns in first-seen order)."""
    out = {}
    for table, rows in CORPUS.items():
        columns = list(dict.fromkeys(c for row, _ in rows for c in row))
        out[table] = pl.DataFrame(
            {c: [row.get(c) for row, _ in rows] for c in columns},
            schema=dict.fromkeys(columns, pl.String),
        )
    return out


def write_duckdb(path: Path) -> Path:
    """Every column VARCHAR, as a dirty warehouse export has them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        for table, frame in frames().items():
            con.register("incoming", frame.to_arrow())
            con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM incoming')
            con.unregister("incoming")
    return path


def write_csv_folder(folder: Path, malformed: bool = True) -> Path:
    """RFC 4180 CSV (quoted where needed); malformed lines appended raw after the good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, frame in frames().items():
        path = folder / f"{table}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(frame.columns)
            for row in frame.iter_rows():
                writer.writerow(["" if v is None else v for v in row])
            if malformed:
                for target, text, _, _ in MALFORMED_LINES:
                    if target == table:
                        f.write(text + "\n")
    return folder


def expected_rows(table: str, csv_source: bool) -> list[tuple[str, Expect]]:
    """(key or marker, expectation) of every row planted in `table`."""
    key = SOURCE_TABLES[table].key
    planted = [(row[key] or "", expect) for row, expect in CORPUS[table]]
    if csv_source:
        planted += [(marker, e) for t, _, marker, e in MALFORMED_LINES if t == table]
    return planted


def num_source_records(table: str, csv_source: bool) -> int:
    return len(expected_rows(table, csv_source))


# -- small helpers the reliability, security and crash tests share ---------------------------


def generic_profile_json() -> str:
    """A schema-valid profile that claims nothing (no citations): the fill step completes it
    from facts and candidates, so it passes every check for any user."""

    def text() -> dict[str, object]:
        return {"value": "", "evidence": [], "confidence": 0.3, "basis": "inferred"}

    def items() -> dict[str, object]:
        return {"value": [], "evidence": [], "confidence": 0.3, "basis": "inferred"}

    profile = {
        "tags": items(),
        "interest_summary": text(),
        "spending_level": {**text(), "value": "中"},
        "intended_projects": items(),
        "concerns": items(),
        "portrait": text(),
        "recommendation_reasons": items(),
        "anomalies": items(),
        "next_action": text(),
        "purchase_intent": {**text(), "value": "中", "probability": 0.5},
    }
    return json.dumps(profile, ensure_ascii=False)


def chat_reply(body: dict[str, object], content: str, done_reason: str = "stop") -> dict:
    """An Ollama /api/chat answer carrying `content`."""
    return {
        "model": body["model"],
        "created_at": "2024-06-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": done_reason,
        "prompt_eval_count": 100,
        "eval_count": 50,
        "eval_duration": 100_000_000,
    }


def profile_answer(body: dict[str, object]) -> dict:
    """An Ollama /api/chat handler that answers every prompt with `generic_profile_json`."""
    return chat_reply(body, generic_profile_json())


def prompt_user_id(body: dict[str, object]) -> str:
    """The user id a profile prompt is about (from its facts block)."""
    messages = body.get("messages") or []
    text = messages[1]["content"] if len(messages) > 1 else ""  # type: ignore[index]
    found = re.search(r"- 用户：(\S+?)；", str(text))
    return found.group(1) if found else ""


def materialized(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def step_failure(result: dg.ExecuteInProcessResult, step: str) -> tuple[str, dict[str, object]]:
    """(description, metadata) of the `dg.Failure` a step raised (its last attempt)."""
    found = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_key == step
    ]
    assert found, f"step {step} did not fail"
    data = found[-1].user_failure_data  # type: ignore[union-attr]
    assert data is not None, f"step {step} failed without a dg.Failure"
    return str(data.description), {k: v.value for k, v in data.metadata.items()}


def check_result(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    found = [c for c in result.get_asset_check_evaluations() if c.check_name == name]
    assert found, f"check {name} did not run"
    return found[0]


def run_job(
    settings: Settings,
    cohort: str,
    instance: dg.DagsterInstance,
    upto: str | None = None,
    only: str | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """The profile job for one cohort: everything, everything up to `upto`, or `only` one."""
    defs = build_definitions(settings)
    job = defs.resolve_job_def(PROFILE_JOB)
    selection = None
    if upto is not None:
        graph = defs.resolve_asset_graph()
        upstream = dg.AssetSelection.assets(upto).upstream().required_multi_asset_neighbors()
        # Stitching (when the spec declares ids) has a job of its own, run before this one.
        upstream = upstream - dg.AssetSelection.groups("identity")
        selection = sorted(upstream.resolve(graph))
    elif only is not None:
        selection = [dg.AssetKey(only)]
    return job.execute_in_process(
        partition_key=cohort,
        instance=instance,
        asset_selection=selection,
        raise_on_error=raise_on_error,
    )


# Personal data the PII tests plant in the source and then search every store for.
PLANTED_PII = {
    "phone": "13812345678",
    "phone_plus86": "+86 139 1234 5678",
    "phone_dashed": "137-1234-5678",
    "id_card": "11010519900307123X",
    "email": "zhang.san@example.com",
    "bank_card": "6222021234567890123",
    "bank_card_spaced": "6222 0212 3456 7890",
}


def pii_needles(planted: dict[str, str]) -> dict[str, str]:
    """Each planted string, and its digits alone (a masked copy must not keep those either)."""
    out = dict(planted)
    for name, value in planted.items():
        digits = re.sub(r"\D", "", value)
        if digits != value and len(digits) >= 11:
            out[f"{name}_digits"] = digits
    return out


def store_texts(settings: Settings, prompts: list[Any], logs: str) -> dict[str, str]:
    """Every store a derived copy of user data can reach, as text: warehouse tables, LanceDB
    tables, the document, profile and report files, the prompts sent, the event log."""
    texts: dict[str, str] = {}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        for table in tables:
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            texts[f"warehouse.{table}"] = json.dumps(rows, ensure_ascii=False, default=str)
    db = lancedb.connect(str(settings.lancedb_dir))
    for name in db.list_tables().tables:
        frame = db.open_table(name).to_arrow().drop_columns(["vector"])
        texts[f"lancedb.{name}"] = json.dumps(frame.to_pylist(), ensure_ascii=False, default=str)
    for folder in (settings.documents_dir, settings.profiles_dir, settings.reports_dir):
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                texts[f"file.{path.relative_to(settings.data_dir)}"] = path.read_text("utf-8")
    texts["prompts"] = json.dumps(prompts, ensure_ascii=False)  # exactly what the LLM was sent
    texts["dagster_event_log"] = logs
    return texts
