"""Anomaly rules over tiny hand-built tables: each rule kind flags what it should and only that."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from profiling_assets.core.anomalies import (
    AnomalyFinding,
    _user_other_median,
    detect_anomalies,
)
from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.spec import (
    Keywords,
    LargeOrder,
    MessageBurst,
    RefundThenLargeOrder,
    load_spec,
)

DAY0 = date(2025, 3, 2)
T0 = datetime(2025, 3, 2, 10, 0)

REFUND = RefundThenLargeOrder(
    name="退款后又大额下单",
    kind="refund_then_large_order",
    refund_keywords=["退款", "退费", "refund"],
    within_days=30,
    min_amount=10_000,
)
BURST = MessageBurst(
    name="短时间内大量重复咨询", kind="message_burst", min_messages=6, within_hours=3
)
COHORT_LARGE = LargeOrder(
    name="异常大额消费", kind="large_order", ratio=5, baseline="cohort_median", min_amount=50_000
)
USER_LARGE = LargeOrder(
    name="远超个人习惯", kind="large_order", ratio=5, baseline="user_median", min_amount=0
)
COMPLAINT = Keywords(name="投诉或纠纷", kind="keywords", keywords=["投诉", "曝光", "315"])


def table(name: str, rows: Sequence[tuple[Any, ...]] = ()) -> pl.DataFrame:
    """A validated-shaped table: exactly the contract columns, typed."""
    schema = {c.name: c.dtype for c in SOURCE_TABLES[name].columns}
    return pl.DataFrame(list(rows), schema=schema, orient="row")


def order(order_id: str, user_id: str, amount: float, day: date) -> tuple[Any, ...]:
    return (order_id, user_id, "隆鼻", "医美项目", amount, day)


def event(event_id: str, user_id: str, target: str, at: datetime) -> tuple[Any, ...]:
    return (event_id, user_id, "搜索", target, at)


def message(message_id: str, user_id: str, text: str, at: datetime) -> tuple[Any, ...]:
    return (message_id, user_id, text, at, "微信")


def detect(
    rules: Sequence[Any],
    sales: Sequence[tuple[Any, ...]] = (),
    behaviour: Sequence[tuple[Any, ...]] = (),
    chat: Sequence[tuple[Any, ...]] = (),
) -> list[AnomalyFinding]:
    return detect_anomalies(
        rules, table("sales", sales), table("behaviour", behaviour), table("chat", chat)
    )


# --- refund_then_large_order ------------------------------------------------------------------


def test_refund_then_large_order_flags_the_pair() -> None:
    found = detect(
        [REFUND],
        sales=[order("o1", "u1", 28_000, DAY0 + timedelta(days=12))],
        chat=[message("m1", "u1", "上次的项目我想退款", T0)],
    )
    assert found == [
        AnomalyFinding(
            user_id="u1",
            anomaly="退款后又大额下单",
            source_ids=["m1", "o1"],
            detail="2025-03-02 提到退款，12 天后下单 28000 元",
        )
    ]


def test_refund_then_large_order_too_late_too_small_or_before_is_not_flagged() -> None:
    chat = [message("m1", "u1", "我要退款", T0)]
    too_late = [order("o1", "u1", 28_000, DAY0 + timedelta(days=40))]
    too_small = [order("o2", "u1", 9_999, DAY0 + timedelta(days=3))]
    before = [order("o3", "u1", 28_000, DAY0 - timedelta(days=1))]
    assert detect([REFUND], sales=too_late, chat=chat) == []
    assert detect([REFUND], sales=too_small, chat=chat) == []
    assert detect([REFUND], sales=before, chat=chat) == []
    # Another user's large order does not count.
    other_user = [order("o4", "u2", 28_000, DAY0 + timedelta(days=1))]
    assert detect([REFUND], sales=other_user, chat=chat) == []


def test_refund_window_is_inclusive_and_same_day_counts() -> None:
    on_edge = detect(
        [REFUND],
        sales=[order("o1", "u1", 10_000, DAY0 + timedelta(days=30))],
        chat=[message("m1", "u1", "退款", T0)],
    )
    assert [(f.source_ids, f.detail) for f in on_edge] == [
        (["m1", "o1"], "2025-03-02 提到退款，30 天后下单 10000 元")
    ]
    same_day = detect(
        [REFUND],
        sales=[order("o1", "u1", 12_345.5, DAY0)],
        chat=[message("m1", "u1", "退费怎么弄", T0 + timedelta(hours=5))],
    )
    assert [f.detail for f in same_day] == ["2025-03-02 提到退费，当天下单 12345.5 元"]


def test_refund_mention_in_behaviour_and_ascii_case_insensitive() -> None:
    found = detect(
        [REFUND],
        sales=[order("o9", "u1", 20_000, DAY0 + timedelta(days=2))],
        behaviour=[event("e1", "u1", "REFUND policy", T0)],
    )
    assert [(f.source_ids, f.detail) for f in found] == [
        (["e1", "o9"], "2025-03-02 提到refund，2 天后下单 20000 元")
    ]


def test_refund_uses_the_earliest_qualifying_pair_only() -> None:
    found = detect(
        [REFUND],
        sales=[
            order("o1", "u1", 50_000, DAY0 - timedelta(days=5)),  # before every mention
            order("o2", "u1", 15_000, DAY0 + timedelta(days=45)),  # 45 days after m1, 5 after m2
            order("o3", "u1", 30_000, DAY0 + timedelta(days=50)),
        ],
        chat=[
            message("m1", "u1", "退款", T0),
            message("m2", "u1", "还是想退款", T0 + timedelta(days=40)),
            message("m3", "u1", "退款进度", T0 + timedelta(days=44)),
        ],
    )
    assert [(f.source_ids, f.detail) for f in found] == [
        (["m2", "o2"], "2025-04-11 提到退款，5 天后下单 15000 元")
    ]


# --- message_burst ------------------------------------------------------------------------------


def test_message_burst_flags_the_densest_window() -> None:
    burst = [message(f"m{i}", "u1", "在吗", T0 + timedelta(minutes=20 * i)) for i in range(7)]
    outside = [message("x1", "u1", "你好", T0 - timedelta(hours=5))]
    found = detect([BURST], chat=burst + outside)
    assert found == [
        AnomalyFinding(
            user_id="u1",
            anomaly="短时间内大量重复咨询",
            source_ids=[f"m{i}" for i in range(7)],
            detail="2025-03-02 10:00 起 3 小时内发了 7 条消息",
        )
    ]


def test_message_burst_needs_enough_messages_within_the_window() -> None:
    five_in_three_hours = [
        message(f"m{i}", "u1", "在吗", T0 + timedelta(minutes=30 * i)) for i in range(5)
    ]
    six_over_five_hours = [
        message(f"n{i}", "u2", "在吗", T0 + timedelta(hours=i)) for i in range(6)
    ]
    assert detect([BURST], chat=five_in_three_hours + six_over_five_hours) == []


def test_message_burst_window_edge_is_inclusive_and_ids_are_capped() -> None:
    # Exactly 3 hours from first to last message still counts.
    edge = [message(f"m{i}", "u1", "在吗", T0 + timedelta(minutes=36 * i)) for i in range(6)]
    assert [f.source_ids for f in detect([BURST], chat=edge)] == [[f"m{i}" for i in range(6)]]
    # 25 messages in one minute: all counted, 20 earliest cited.
    flood = [message(f"f{i:02d}", "u2", "在吗", T0 + timedelta(seconds=2 * i)) for i in range(25)]
    (finding,) = detect([BURST], chat=flood)
    assert finding.source_ids == [f"f{i:02d}" for i in range(20)]
    assert finding.detail == "2025-03-02 10:00 起 3 小时内发了 25 条消息"


def test_message_burst_picks_the_denser_of_two_bursts() -> None:
    first = [message(f"a{i}", "u1", "在吗", T0 + timedelta(minutes=10 * i)) for i in range(6)]
    later = T0 + timedelta(days=1)
    second = [message(f"b{i}", "u1", "在吗", later + timedelta(minutes=10 * i)) for i in range(8)]
    (finding,) = detect([BURST], chat=first + second)
    assert finding.source_ids == [f"b{i}" for i in range(8)]
    assert finding.detail == "2025-03-03 10:00 起 3 小时内发了 8 条消息"


# --- large_order --------------------------------------------------------------------------------


def test_large_order_against_cohort_median() -> None:
    sales = [order(f"o{i}", f"u{i}", 10_000, DAY0) for i in range(5)]
    sales += [order("big", "u9", 80_000, DAY0 + timedelta(days=3))]
    found = detect([COHORT_LARGE], sales=sales)
    assert found == [
        AnomalyFinding(
            user_id="u9",
            anomaly="异常大额消费",
            source_ids=["big"],
            detail="2025-03-05 一单 80000 元，是全体订单中位数 10000 元 的 8 倍",
        )
    ]


def test_large_order_below_min_amount_or_ratio_is_not_flagged() -> None:
    cheap = [order(f"o{i}", f"u{i}", 1_000, DAY0) for i in range(5)]
    # 40× the median but under min_amount 50000.
    assert detect([COHORT_LARGE], sales=[*cheap, order("x", "u9", 40_000, DAY0)]) == []
    # Over min_amount but under 5× the median (median 20000).
    pricey = [order(f"o{i}", f"u{i}", 20_000, DAY0) for i in range(5)]
    assert detect([COHORT_LARGE], sales=[*pricey, order("x", "u9", 90_000, DAY0)]) == []


def test_large_order_cites_at_most_three_largest() -> None:
    sales = [order(f"o{i}", f"u{i}", 1_000, DAY0) for i in range(9)]
    amounts = [60_000, 90_000, 70_000, 80_000]
    sales += [order(f"big{i}", "u9", a, DAY0) for i, a in enumerate(amounts)]
    (finding,) = detect([COHORT_LARGE], sales=sales)
    assert finding.source_ids == ["big1", "big2", "big3"]
    assert (
        finding.detail == "2025-03-02 一单 90000 元，是全体订单中位数 1000 元 的 90 倍，共 4 单超标"
    )


def test_large_order_against_user_median() -> None:
    sales = [
        order("a1", "u1", 100, DAY0),
        order("a2", "u1", 120, DAY0),
        order("a3", "u1", 100, DAY0),
        order("a4", "u1", 1_000, DAY0 + timedelta(days=1)),
        # u2 has only two orders: no personal baseline, never flagged.
        order("b1", "u2", 100, DAY0),
        order("b2", "u2", 100_000, DAY0),
    ]
    assert [(f.user_id, f.source_ids, f.detail) for f in detect([USER_LARGE], sales=sales)] == [
        ("u1", ["a4"], "2025-03-03 一单 1000 元，是该用户其他订单中位数 100 元 的 10 倍")
    ]


def test_user_median_excludes_the_order_itself() -> None:
    rng = random.Random(7)
    rows = [
        order(f"o{u}-{i}", f"u{u}", float(rng.choice([50, 100, 100, 300, 800, 5000])), DAY0)
        for u in range(30)
        for i in range(rng.randint(1, 7))
    ]
    got = _user_other_median(table("sales", rows))
    by_user: dict[str, list[tuple[str, float]]] = {}
    for order_id, user_id, _, _, amount, _ in rows:
        by_user.setdefault(user_id, []).append((order_id, amount))
    for row in got.iter_rows(named=True):
        orders = by_user[row["user_id"]]
        others = [a for oid, a in orders if oid != row["order_id"]]
        expected = statistics.median(others) if len(orders) >= 3 else None
        assert row["baseline"] == expected, row


# --- keywords -----------------------------------------------------------------------------------


def test_keywords_in_chat() -> None:
    chat = [
        message("m3", "u1", "再不处理我就去315曝光", T0 + timedelta(days=1)),
        message("m1", "u1", "我要投诉你们", T0),
        message("m2", "u1", "什么时候有空", T0 + timedelta(hours=1)),
        message("m4", "u2", "价格多少", T0),
    ]
    found = detect([COMPLAINT], chat=chat)
    assert found == [
        AnomalyFinding(
            user_id="u1",
            anomaly="投诉或纠纷",
            source_ids=["m1", "m3"],
            detail="2025-03-02 起有 2 条消息提到“投诉”“曝光”“315”",
        )
    ]


def test_keywords_tables_decide_where_to_look() -> None:
    behaviour = [event("e1", "u1", "投诉入口", T0)]
    assert detect([COMPLAINT], behaviour=behaviour) == []
    both = COMPLAINT.model_copy(update={"tables": ["chat", "behaviour"]})
    found = detect([both], behaviour=behaviour, chat=[message("m1", "u1", "我要投诉", T0)])
    assert [(f.source_ids, f.detail) for f in found] == [
        (["e1", "m1"], "2025-03-02 起有 2 条记录提到“投诉”")
    ]


def test_keywords_cite_the_five_earliest() -> None:
    chat = [message(f"m{i}", "u1", "投诉", T0 + timedelta(hours=10 - i)) for i in range(8)]
    (finding,) = detect([COMPLAINT], chat=chat)
    # m7 is the earliest message, m3 the fifth earliest.
    assert finding.source_ids == ["m3", "m4", "m5", "m6", "m7"]
    assert finding.detail == "2025-03-02 起有 8 条消息提到“投诉”"


def test_keywords_match_ascii_case_insensitively() -> None:
    rule = Keywords(name="竞品", kind="keywords", keywords=["SoYoung"])
    found = detect([rule], chat=[message("m1", "u1", "我在soyoung上看到更便宜的", T0)])
    assert [(f.source_ids, f.detail) for f in found] == [
        (["m1"], "2025-03-02 起有 1 条消息提到“SoYoung”")
    ]


# --- the whole rule set -------------------------------------------------------------------------


def test_empty_tables_give_no_findings() -> None:
    rules = [REFUND, BURST, COHORT_LARGE, USER_LARGE, COMPLAINT]
    assert detect(rules) == []
    assert detect_anomalies(rules, pl.DataFrame(), pl.DataFrame(), pl.DataFrame()) == []


def test_clinic_spec_rules_on_a_small_cohort() -> None:
    rules = load_spec("clinic").anomalies
    sales = [order(f"o{i}", f"n{i}", 5_000, DAY0) for i in range(6)]
    sales += [
        order("s1", "u2", 60_000, DAY0 + timedelta(days=10)),  # refund then large, also 12×
        order("s2", "u3", 12_000, DAY0 + timedelta(days=10)),
    ]
    chat = [
        message("c1", "u2", "之前那个退掉吧，退款多久到账", T0),
        message("c2", "u3", "我要投诉", T0),
        *(message(f"b{i}", "u1", "在吗在吗", T0 + timedelta(minutes=15 * i)) for i in range(6)),
    ]
    found = detect(rules, sales=sales, chat=chat)
    assert [(f.user_id, f.anomaly, f.source_ids) for f in found] == [
        ("u1", "短时间内大量重复咨询", [f"b{i}" for i in range(6)]),
        ("u2", "退款后又大额下单", ["c1", "s1"]),
        ("u2", "异常大额消费", ["s1"]),
        ("u3", "投诉或纠纷", ["c2"]),
    ]
    # u2's message names 退掉 before 退款; the sentence names the spec's first keyword it holds.
    assert found[1].detail == "2025-03-02 提到退款，10 天后下单 60000 元"
    assert found[2].detail == "2025-03-12 一单 60000 元，是全体订单中位数 5000 元 的 12 倍"


def test_output_is_deterministic_and_sorted_by_user_then_rule() -> None:
    rules = [COMPLAINT, BURST]
    chat = [message(f"z{i}", "u0", "在吗", T0 + timedelta(minutes=i)) for i in range(6)]
    chat += [message("y1", "u0", "投诉", T0), message("y2", "a9", "投诉", T0)]
    first = detect(rules, chat=chat)
    assert [(f.user_id, f.anomaly) for f in first] == [
        ("a9", "投诉或纠纷"),
        ("u0", "投诉或纠纷"),
        ("u0", "短时间内大量重复咨询"),
    ]
    assert detect(rules, chat=list(reversed(chat))) == first


@pytest.mark.slow
def test_scale_100k_users_with_a_million_chat_rows() -> None:
    users = 100_000
    per_user = 10
    n = users * per_user
    user_ids = [f"u{i:06d}" for i in range(users) for _ in range(per_user)]
    # Ordinary users chat once a day; planted users send everything within one hour.
    planted = {"u000007", "u050000", "u099999"}
    minutes = [
        (i % per_user) * (5 if uid in planted else 24 * 60) for i, uid in enumerate(user_ids)
    ]
    texts = ["多少钱？"] * n
    texts[7 * per_user] = "我要投诉"
    chat = pl.DataFrame(
        {
            "message_id": [f"m{i:07d}" for i in range(n)],
            "user_id": user_ids,
            "message": texts,
            "sent_at": [T0 + timedelta(minutes=m) for m in minutes],
            "channel": ["微信"] * n,
        },
        schema={c.name: c.dtype for c in SOURCE_TABLES["chat"].columns},
    )
    sales = pl.DataFrame(
        {
            "order_id": [f"o{i:06d}" for i in range(users)],
            "user_id": [f"u{i:06d}" for i in range(users)],
            "item": ["水光针"] * users,
            "category": ["皮肤项目"] * users,
            "amount": [1_000.0] * (users - 1) + [90_000.0],
            "order_date": [DAY0] * users,
        },
        schema={c.name: c.dtype for c in SOURCE_TABLES["sales"].columns},
    )
    started = time.perf_counter()
    found = detect_anomalies(load_spec("clinic").anomalies, sales, table("behaviour"), chat)
    elapsed = time.perf_counter() - started
    print(f"100k users × 10 chat rows: {len(found)} findings in {elapsed:.2f}s")
    assert [(f.user_id, f.anomaly) for f in found] == [
        ("u000007", "短时间内大量重复咨询"),
        ("u000007", "投诉或纠纷"),
        ("u050000", "短时间内大量重复咨询"),
        ("u099999", "短时间内大量重复咨询"),
        ("u099999", "异常大额消费"),
    ]
    assert found[0].source_ids == [f"m{70 + i:07d}" for i in range(10)]
    assert found[4].source_ids == ["o099999"]
