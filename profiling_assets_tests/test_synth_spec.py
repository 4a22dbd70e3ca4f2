"""The spec-driven sample generator: deterministic, on the sample schemas, and with a truth
that agrees with the spec it was drawn from (labels, thresholds, `requires`, intent and
anomaly rules), for both shipped specs and a tiny spec written here."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from profiling_assets.core.conditions import LABEL_FACT
from profiling_assets.core.contract import MAX_PLAUSIBLE_AMOUNT, SOURCE_TABLES
from profiling_assets.core.spec import (
    Keywords,
    LargeOrder,
    MessageBurst,
    ProfileSpec,
    RefundThenLargeOrder,
    load_spec,
    parse_spec,
)
from profiling_assets.synth.from_spec import generate_tables_for_spec
from profiling_assets.synth.generate import SCHEMAS

USERS = 400
SEED = 3
EVENT_TIME = {"sales": "order_date", "behaviour": "event_time", "chat": "sent_at"}
TEXT = {"behaviour": "target", "chat": "message"}
LATEST_VALID = datetime(2026, 12, 31, 23, 59, 59)

# A spec far from both shipped ones: no examples, few items, one project without any item,
# every anomaly kind, a user-median large order and a keyword rule over behaviour only.
TINY: dict[str, Any] = {
    "business": {
        "name": "小小健身房",
        "kind": "健身房",
        "currency": "元",
        "description": "一家社区健身房，卖私教课和会员卡。",
    },
    "sales_sections": [{"heading": "课程消费", "categories": ["课程"]}],
    "catalogue": [
        {"name": "私教课", "category": "课程", "low": 200, "high": 400, "label": "增肌"},
        {"name": "团课次卡", "category": "课程", "low": 50, "high": 120},
    ],
    "label_groups": [
        {
            "id": "project",
            "name": "意向课程",
            "labels": [
                {"name": "增肌", "description": "想练得壮一点，长点肌肉", "aliases": ["练肌肉"]},
                {"name": "减脂", "description": "肚子上肉太多了，想瘦下来", "aliases": ["减肥"]},
                {"name": "体态矫正", "description": "含胸驼背，想把体态练好看"},
            ],
        },
        {
            "id": "concern",
            "name": "关注点",
            "labels": [
                {"name": "受伤", "description": "怕练的时候把腰和膝盖弄伤", "aliases": ["伤膝盖"]},
                {"name": "时间", "description": "下班太晚了，怕没空来练", "aliases": ["没时间"]},
            ],
        },
        {
            "id": "tag",
            "name": "用户标签",
            "labels": [
                {"name": "老会员", "description": "来了很多次了", "requires": "order_count >= 2"},
                {
                    "name": "舍得花钱",
                    "description": "买课不太看价钱",
                    "aliases": ["买最贵的"],
                    "requires": "total_spend >= 500",
                },
                {"name": "上班族", "description": "白天上班晚上才有空", "aliases": ["加班"]},
            ],
        },
        {
            "id": "intent_signal",
            "field": "signals",
            "name": "意向信号",
            "labels": [
                {"name": "马上报名", "description": "想今天就交钱报名", "aliases": ["报名"]}
            ],
        },
    ],
    "spending": {"mode": "fixed", "high": 1000, "mid": 300},
    "intent": {
        "default": "低",
        "rules": [{"level": "高", "when": "label == 马上报名", "reason": "要报名"}],
    },
    "anomalies": [
        {
            "name": "退款后大额",
            "kind": "refund_then_large_order",
            "refund_keywords": ["退卡"],
            "within_days": 5,
            "min_amount": 300,
        },
        {"name": "刷屏", "kind": "message_burst", "min_messages": 4, "within_hours": 1},
        {
            "name": "大单",
            "kind": "large_order",
            "ratio": 4,
            "baseline": "user_median",
            "min_amount": 1000,
        },
        {"name": "投诉", "kind": "keywords", "keywords": ["投诉"], "tables": ["behaviour"]},
    ],
    "questions": [{"id": "spending", "dimension": "消费", "text": "用户花了多少钱买课？"}],
}


def _specs() -> dict[str, ProfileSpec]:
    return {
        "clinic": load_spec("clinic"),
        "skincare_shop": load_spec("skincare_shop"),
        "tiny": parse_spec(TINY, "<tiny>"),
    }


SPECS = _specs()


@pytest.fixture(scope="module", params=list(SPECS))
def case(request: pytest.FixtureRequest) -> tuple[ProfileSpec, dict[str, pl.DataFrame]]:
    spec = SPECS[request.param]
    return spec, generate_tables_for_spec(spec, USERS, SEED)


# --- an independent reading of the tables ------------------------------------------------
def _checked(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """An event table with `_at` (its parsed time) and `_invalid` (the row breaks a rule of
    the brief; of several rows with one id, all but the first)."""
    fmt = "%Y-%m-%d" if name == "sales" else "%Y-%m-%d %H:%M:%S"
    df = tables[name].with_columns(
        pl.col(EVENT_TIME[name]).str.strptime(pl.Datetime("us"), fmt, strict=False).alias("_at")
    )
    user = pl.col("user_id")
    bad = (
        user.is_null()
        | (user.str.strip_chars() == "")
        | ~user.is_in(tables["truth"]["user_id"].implode())
        | pl.col("_at").is_null()
        | (pl.col("_at") > LATEST_VALID)
    )
    if name == "sales":
        bad = bad | (pl.col("amount") < 0) | (pl.col("amount") > MAX_PLAUSIBLE_AMOUNT)
    else:
        bad = bad | (pl.col(TEXT[name]).str.strip_chars() == "")
    bad = bad | ~pl.col(SOURCE_TABLES[name].key).is_first_distinct()
    return df.with_columns(bad.fill_null(True).alias("_invalid"))


def _valid(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    return _checked(tables, name).filter(~pl.col("_invalid"))


def _level(total: float, spec: ProfileSpec) -> str:
    s = spec.spending
    assert s.high is not None and s.mid is not None
    return "高" if total >= s.high else "中" if total >= s.mid else "低"


def _facts(spec: ProfileSpec, tables: dict[str, pl.DataFrame]) -> dict[str, dict[str, Any]]:
    """Per user: the facts a `requires` may read, from the valid rows only."""
    per_user = (
        _valid(tables, "sales")
        .group_by("user_id")
        .agg(pl.len().alias("order_count"), pl.col("amount").sum().alias("total_spend"))
    )
    people = tables["users"].filter(pl.col("user_id").is_first_distinct())
    joined = (
        tables["truth"]
        .select("user_id")
        .join(per_user, on="user_id", how="left")
        .join(people.select("user_id", "gender", "age"), on="user_id", how="left")
        .with_columns(pl.col("order_count").fill_null(0), pl.col("total_spend").fill_null(0.0))
    )
    facts = {}
    for row in joined.iter_rows(named=True):
        count, total = row["order_count"], row["total_spend"]
        facts[row["user_id"]] = {
            "order_count": float(count),
            "total_spend": total,
            "monetary_avg": total / count if count else None,
            "spending_level": _level(total, spec) if spec.spending.mode == "fixed" else None,
            "gender": row["gender"],
            "age": None if row["age"] is None else float(row["age"]),
        }
    return facts


def _users_with_text(frame: pl.DataFrame, column: str, needles: list[str]) -> set[str]:
    return set(
        frame.filter(pl.col(column).str.contains_any(needles, ascii_case_insensitive=True))[
            "user_id"
        ]
    )


# --- tests -------------------------------------------------------------------------------
def test_same_arguments_give_identical_tables() -> None:
    spec = SPECS["skincare_shop"]
    first = generate_tables_for_spec(spec, 150, 5)
    second = generate_tables_for_spec(spec, 150, 5)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].equals(second[name]), name
    other = generate_tables_for_spec(spec, 150, 6)
    assert not first["chat"].equals(other["chat"])


def test_tables_have_the_sample_schemas(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    _, tables = case
    assert list(tables) == list(SCHEMAS)
    for name, schema in SCHEMAS.items():
        assert dict(tables[name].schema) == schema, name
    assert tables["truth"].height == USERS
    assert tables["truth"]["user_id"].is_unique().all()


def test_both_styles_describe_the_same_people_in_different_words() -> None:
    spec = SPECS["skincare_shop"]
    standard = generate_tables_for_spec(spec, 300, 9, style="standard")
    alt = generate_tables_for_spec(spec, 300, 9, style="alt")
    assert standard["truth"].drop("signal_ids").equals(alt["truth"].drop("signal_ids"))
    assert standard["users"].head(300).equals(alt["users"].head(300))  # then the invalid ones

    def said(tables: dict[str, pl.DataFrame]) -> set[str]:
        ids = tables["truth"]["signal_ids"].explode()
        return set(tables["chat"].filter(pl.col("message_id").is_in(ids.implode()))["message"])

    standard_said, alt_said = said(standard), said(alt)
    assert not standard["chat"]["message"].equals(alt["chat"]["message"])
    shared = standard_said & alt_said
    assert len(shared) / len(alt_said) < 0.1, sorted(shared)[:20]
    # The standard style says what the spec's examples say; the alt style never quotes them.
    examples = {e for _, label in spec.labels for e in label.examples}
    assert standard_said & examples
    assert not alt_said & examples


def test_truth_labels_come_from_the_right_groups(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    spec, tables = case
    truth = tables["truth"]
    assert set(truth["intended_project"]) <= set(spec.label_names("intended_projects"))
    assert set(truth["concerns"].explode().drop_nulls()) <= set(spec.label_names("concerns"))
    assert set(truth["tags"].explode().drop_nulls()) <= set(spec.label_names("tags"))
    assert set(truth["anomalies"].explode().drop_nulls()) <= set(spec.anomaly_names)
    assert set(truth["spending_level"]) == {"低", "中", "高"}
    assert set(truth["purchase_intent"]) <= {"低", "中", "高"}
    assert truth["concerns"].list.len().is_between(1, 3).all()
    assert truth["tags"].list.len().is_between(1, 3).all()
    assert truth["anomalies"].list.len().max() == 1
    assert 0.02 <= (truth["anomalies"].list.len() > 0).mean() <= 0.09  # type: ignore[operator]


def test_spending_levels_follow_the_fixed_thresholds(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    spec, tables = case
    assert spec.spending.mode == "fixed"
    facts = _facts(spec, tables)
    wrong = [
        (row["user_id"], row["spending_level"], facts[row["user_id"]]["total_spend"])
        for row in tables["truth"].iter_rows(named=True)
        if facts[row["user_id"]]["spending_level"] != row["spending_level"]
    ]
    assert not wrong, wrong[:10]


def test_tags_respect_their_requires(case: tuple[ProfileSpec, dict[str, pl.DataFrame]]) -> None:
    spec, tables = case
    facts = _facts(spec, tables)
    conditional = {lb.name: lb.condition for _, lb in spec.labels if lb.condition is not None}
    seen: set[str] = set()
    for row in tables["truth"].iter_rows(named=True):
        for tag in row["tags"]:
            condition = conditional.get(tag)
            if condition is not None:
                seen.add(tag)
                assert condition.holds(facts[row["user_id"]]), (row["user_id"], tag)
    assert seen, "no tag with a `requires` was ever drawn"


def test_purchase_intent_agrees_with_the_label_rules(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    """Reading the signal labels back from the texts, the spec's label rules give the truth."""
    spec, tables = case
    chat = _valid(tables, "chat").select("user_id", pl.col("message").alias("text"))
    events = _valid(tables, "behaviour").select("user_id", pl.col("target").alias("text"))
    texts = pl.concat([chat, events])
    signals = [lb for g, lb in spec.labels if g.profile_field == "signals"]
    said: dict[str, set[str]] = {}
    for label in signals:
        users = _users_with_text(texts, "text", list(label.keywords))
        users |= set(texts.filter(pl.col("text").is_in(list(label.examples)))["user_id"])
        for user in users:
            said.setdefault(user, set()).add(label.name)
    rules = [r for r in spec.intent.rules if all(c.name == LABEL_FACT for c in r.condition.clauses)]
    for row in tables["truth"].iter_rows(named=True):
        labels = {row["intended_project"], *row["concerns"], *row["tags"]}
        labels |= said.get(row["user_id"], set())
        expected = next(
            (r.level for r in rules if r.condition.holds({}, labels)), spec.intent.default
        )
        assert expected is None or row["purchase_intent"] == expected, row


def test_every_anomaly_rule_is_planted_as_its_parameters_say(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    spec, tables = case
    truth = tables["truth"].explode("anomalies")
    sales, chat = _valid(tables, "sales"), _valid(tables, "chat")
    behaviour = _valid(tables, "behaviour")
    for rule in spec.anomalies:
        users = set(truth.filter(pl.col("anomalies") == rule.name)["user_id"])
        assert users, f"{rule.name} was never planted"
        for user in sorted(users):
            orders = sales.filter(pl.col("user_id") == user)
            messages = chat.filter(pl.col("user_id") == user).sort("_at")
            if isinstance(rule, RefundThenLargeOrder):
                mentions = _users_with_text(messages, "message", rule.refund_keywords)
                assert mentions == {user}, (rule.name, user)
                said_on = messages.filter(pl.col("message").str.contains_any(rule.refund_keywords))[
                    "_at"
                ].min()
                assert isinstance(said_on, datetime)
                day = said_on.replace(hour=0, minute=0, second=0)
                big = orders.filter(
                    (pl.col("amount") >= rule.min_amount)
                    & (pl.col("_at") >= day)
                    & (pl.col("_at") <= day + timedelta(days=rule.within_days))
                )
                assert big.height >= 1, (rule.name, user)
            elif isinstance(rule, MessageBurst):
                times = messages["_at"].to_list()
                span = timedelta(hours=rule.within_hours)
                lag = rule.min_messages - 1
                assert any(times[i] - times[i - lag] <= span for i in range(lag, len(times))), (
                    rule.name,
                    user,
                )
            elif isinstance(rule, LargeOrder):
                amounts = orders["amount"].sort().to_list()
                top = amounts[-1]
                if rule.baseline == "cohort_median":
                    baseline = sales["amount"].median()
                else:
                    assert len(amounts) >= 3, (rule.name, user)
                    baseline = pl.Series(amounts[:-1]).median()
                assert isinstance(baseline, float)
                assert top >= rule.min_amount and top >= rule.ratio * baseline, (rule.name, user)
            else:
                assert isinstance(rule, Keywords)
                frames = {"chat": (chat, "message"), "behaviour": (behaviour, "target")}
                hits = set().union(
                    *(
                        _users_with_text(frames[t][0], frames[t][1], rule.keywords)
                        for t in rule.tables
                    )
                )
                assert user in hits, (rule.name, user)
        # No one else says the words that make a keyword or refund rule fire.
        words = [*getattr(rule, "keywords", []), *getattr(rule, "refund_keywords", [])]
        if words:
            texts = pl.concat(
                [
                    chat.select("user_id", pl.col("message").alias("text")),
                    behaviour.select("user_id", pl.col("target").alias("text")),
                ]
            )
            assert _users_with_text(texts, "text", words) <= users, rule.name


@pytest.mark.parametrize("name", list(EVENT_TIME))
def test_invalid_rows_are_a_small_share(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]], name: str
) -> None:
    _, tables = case
    share = _checked(tables, name)["_invalid"].mean()
    assert isinstance(share, float)
    assert 0.01 <= share <= 0.035, (name, share)


def test_signal_ids_point_at_valid_rows_of_the_user(
    case: tuple[ProfileSpec, dict[str, pl.DataFrame]],
) -> None:
    _, tables = case
    owners = pl.concat(
        _valid(tables, name).select(pl.col(SOURCE_TABLES[name].key).alias("id"), "user_id")
        for name in EVENT_TIME
    )
    signals = tables["truth"].select("user_id", pl.col("signal_ids").alias("id")).explode("id")
    assert signals["id"].null_count() == 0 and signals["id"].is_unique().all()
    joined = signals.join(owners, on="id", how="left", suffix="_row")
    assert (joined["user_id"] == joined["user_id_row"]).all()


def test_unrelated_chat_names_no_label(case: tuple[ProfileSpec, dict[str, pl.DataFrame]]) -> None:
    spec, tables = case
    signal_ids = tables["truth"]["signal_ids"].explode().implode()
    noise = _valid(tables, "chat").filter(~pl.col("message_id").is_in(signal_ids))
    keywords = [k for _, label in spec.labels for k in label.keywords]
    assert noise.height > 0
    named = noise.filter(pl.col("message").str.contains_any(keywords, ascii_case_insensitive=True))
    assert named.height == 0, named["message"].to_list()[:10]


def test_projects_without_items_and_specs_without_a_catalogue_still_work() -> None:
    spec = SPECS["tiny"]
    truth = generate_tables_for_spec(spec, 300, 1)["truth"]
    assert {"减脂", "体态矫正"} <= set(truth["intended_project"])  # no item names them
    bare = copy.deepcopy(TINY)
    bare["catalogue"] = []
    tables = generate_tables_for_spec(parse_spec(bare), 200, 2, style="alt")
    items = set(_valid(tables, "sales")["item"])
    assert items & {"增肌", "减脂", "体态矫正"}  # items named after the projects
    facts = _facts(parse_spec(bare), tables)
    assert all(
        facts[r["user_id"]]["spending_level"] == r["spending_level"]
        for r in tables["truth"].iter_rows(named=True)
    )


def test_quantile_mode_fills_the_spec_quantiles() -> None:
    data = copy.deepcopy(TINY)
    data["spending"] = {"mode": "quantile", "mid_quantile": 0.4, "high_quantile": 0.8}
    tables = generate_tables_for_spec(parse_spec(data), 600, 4)
    totals = (
        _valid(tables, "sales")
        .group_by("user_id")
        .agg(pl.col("amount").sum().alias("total"))
        .join(tables["truth"].select("user_id", "spending_level"), on="user_id")
    )
    shares = totals["spending_level"].value_counts(normalize=True)
    share = dict(zip(shares["spending_level"], shares["proportion"], strict=True))
    assert abs(share["低"] - 0.4) < 0.08 and abs(share["高"] - 0.2) < 0.08, share
    high = totals["total"].quantile(0.8, "lower")
    mid = totals["total"].quantile(0.4, "lower")
    assert high is not None and mid is not None
    by_quantile = totals.with_columns(
        pl.when(pl.col("total") >= high)
        .then(pl.lit("高"))
        .when(pl.col("total") >= mid)
        .then(pl.lit("中"))
        .otherwise(pl.lit("低"))
        .alias("computed")
    )
    agree = (by_quantile["computed"] == by_quantile["spending_level"]).mean()
    assert isinstance(agree, float) and agree >= 0.9, agree
