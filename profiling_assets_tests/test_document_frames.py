"""The columnar renderer and chunker give exactly what the per-user reference code gives, on
hostile text in every field and on generated cohorts, batched or not."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pytest

from profiling_assets.core.chunking import (
    ChunkingOptions,
    chunk_documents,
    chunk_documents_frame,
)
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.document_frames import render_documents_frame
from profiling_assets.core.documents import (
    documents_frame,
    documents_from_frame,
    render_cohort_documents,
)
from profiling_assets.core.intake import validate_cohort
from profiling_assets.synth import generate_tables
from profiling_assets_tests.test_documents import (
    ADVERSARIAL,
    CLINIC_LAYOUT,
    EVENTS,
    MESSAGES,
    ORDERS,
    PII,
    USER,
)

# Beyond the Markdown attacks: what each vectorised step must treat as the Python one does.
EDGES = [
    "",
    "a_b",  # `_` escaped after masking
    "［手机号］",  # a neutralised mask tag comes back in its one spelling
    "[邮箱]已脱敏",
    "１３８１２３４５６７８",  # full-width digits are still a phone number
    "tab\there\x85next\u00a0nbsp\u3000ideographic",
    "ab:cd=ef",
    "Ab1 x=1",
    "12) 编号",
    "-",
    "e\u0301",
    "超长" * 400,
    *(value for value, _ in PII),
]
STRINGS = pl.String


def _frames(rows: list[tuple[dict[str, Any], ...]]) -> dict[str, pl.DataFrame]:
    users = pl.DataFrame(
        [r[0] for r in rows],
        schema={
            "user_id": STRINGS,
            "cohort": STRINGS,
            "gender": STRINGS,
            "age": pl.Int64,
            "city": STRINGS,
            "signup_date": pl.Date,
        },
    )
    sales = pl.DataFrame(
        [o for r in rows for o in r[1]],
        schema={
            "order_id": STRINGS,
            "user_id": STRINGS,
            "item": STRINGS,
            "category": STRINGS,
            "amount": pl.Float64,
            "order_date": pl.Date,
        },
    )
    behaviour = pl.DataFrame(
        [e for r in rows for e in r[2]],
        schema={
            "event_id": STRINGS,
            "user_id": STRINGS,
            "event_type": STRINGS,
            "target": STRINGS,
            "event_time": pl.Datetime("us"),
        },
    )
    chat = pl.DataFrame(
        [m for r in rows for m in r[3]],
        schema={
            "message_id": STRINGS,
            "user_id": STRINGS,
            "message": STRINGS,
            "sent_at": pl.Datetime("us"),
            "channel": STRINGS,
        },
    )
    return {"users": users, "sales": sales, "behaviour": behaviour, "chat": chat}


def _hostile_user(n: int, text: str) -> tuple[dict[str, Any], ...]:
    uid = f"u{n:03d}"
    user = {**USER, "user_id": uid, "gender": text, "city": text, "age": None if n % 3 else 30}
    orders = [
        {**o, "user_id": uid, "order_id": f"{uid}-{o['order_id']}", "item": text} for o in ORDERS
    ]
    orders[0]["category"] = text
    events = [
        {**e, "user_id": uid, "event_id": f"{uid}-{e['event_id']}", "target": text} for e in EVENTS
    ]
    events[0]["event_type"] = text or "浏览文章"
    messages = [
        {**m, "user_id": uid, "message_id": f"{uid}-{m['message_id']}", "message": text}
        for m in MESSAGES
    ]
    messages[1]["channel"] = text
    return user, orders, events, messages


def _reference(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return documents_frame(render_cohort_documents(**tables, layout=CLINIC_LAYOUT))


def test_hostile_text_in_every_field_renders_as_the_reference() -> None:
    rows = [_hostile_user(n, text) for n, text in enumerate([*ADVERSARIAL, *EDGES])]
    tables = _frames(rows)
    assert render_documents_frame(**tables, layout=CLINIC_LAYOUT).equals(_reference(tables))


def test_users_without_events_and_events_without_users() -> None:
    tables = _frames([_hostile_user(1, "正常文本"), (dict(USER, user_id="u000"), [], [], [])])
    stray = tables["chat"].with_columns(pl.lit("nobody").alias("user_id"))
    tables["chat"] = pl.concat([tables["chat"], stray])
    frame = render_documents_frame(**tables, layout=CLINIC_LAYOUT)
    assert frame["user_id"].to_list() == ["u000", "u001"]
    assert frame.equals(_reference(tables))
    empty = {name: table.clear() for name, table in tables.items()}
    assert render_documents_frame(**empty).equals(documents_frame([]))


@pytest.mark.parametrize("batch_users", [7, 25_000])
def test_generated_cohort_renders_and_chunks_as_the_reference(batch_users: int) -> None:
    tables = generate_tables(users=60, seed=11, months=1)
    results = validate_cohort({t: tables[t] for t in SOURCE_TABLES}, "2025-01", date(2026, 1, 1))
    accepted = {t: r.accepted for t, r in results.items()}
    frame = render_documents_frame(**accepted, layout=CLINIC_LAYOUT, batch_users=batch_users)
    assert frame.height == accepted["users"].height > 0
    assert frame.equals(_reference(accepted))
    options = ChunkingOptions()
    chunks = chunk_documents_frame(frame, options, batch_users=batch_users)
    assert chunks.equals(chunk_documents(documents_from_frame(frame), options))
