"""The business spec: validation with clear errors, part hashes that feed exactly the assets
that read them, the rules it carries (conditions, intent, vocabulary, keywords) and the CLI."""

from __future__ import annotations

import tomllib
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from profiling_assets.commands.cli import main
from profiling_assets.commands.instance import open_instance
from profiling_assets.config import Settings
from profiling_assets.core.conditions import ConditionError, parse_condition
from profiling_assets.core.facts import SpendThresholds, compute_user_facts, spend_thresholds
from profiling_assets.core.label_scoring import KEYWORD_BOOST, keyword_hits, score_label_candidates
from profiling_assets.core.profiling.answer import apply_vocabulary
from profiling_assets.core.profiling.fact_rules import repair_fact_contradictions
from profiling_assets.core.profiling.schema import ListField, UserProfile
from profiling_assets.core.records import LabelCandidate, UserFacts
from profiling_assets.core.spec import (
    SPECS_DIR,
    STARTER_SPEC,
    ProfileSpec,
    SpecError,
    Spending,
    load_spec,
    parse_spec,
    shipped_specs,
)
from profiling_assets.core.spec_rules import RuleVerdict, build_policy, decide_intent
from profiling_assets.pipeline import build_definitions
from profiling_assets_tests.sample_runs import (
    UP_TO_EVIDENCE,
    add_cohorts,
    profile_job,
    run_cohorts,
    write_sample,
)

CLINIC = load_spec("clinic")
CLINIC_TEXT = (SPECS_DIR / "clinic.toml").read_text(encoding="utf-8")


def _clinic_data() -> dict:
    return tomllib.loads(CLINIC_TEXT)


def test_shipped_specs_and_starter_validate() -> None:
    assert {"clinic", "skincare_shop"} <= set(shipped_specs())
    assert "_starter" not in shipped_specs()
    for path in [*shipped_specs().values(), STARTER_SPEC]:
        spec = load_spec(path)
        assert spec.questions and spec.label_groups and spec.sales_sections


def test_clinic_spec_keeps_the_clinic_vocabulary() -> None:
    assert len(CLINIC.label_names("intended_projects")) == 11
    assert len(CLINIC.label_names("concerns")) == 9
    assert len(CLINIC.label_names("tags")) == 10
    assert CLINIC.sales_headings == ("医美项目消费", "皮肤项目消费", "其他消费")
    assert CLINIC.section_of_category == {"医美项目": "医美项目消费", "皮肤项目": "皮肤项目消费"}


def test_second_spec_is_another_business() -> None:
    shop = load_spec("skincare_shop")
    assert shop.business.kind != CLINIC.business.kind
    assert set(shop.sales_headings).isdisjoint(CLINIC.sales_headings[:-1])
    assert set(shop.label_names("intended_projects")).isdisjoint(
        CLINIC.label_names("intended_projects")
    )
    assert len(shop.anomalies) >= 4


def _mutated(**changes) -> dict:
    data = _clinic_data()
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("/")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        (
            {"label_groups/0/labels/1/name": "全切双眼皮"},
            "label_groups",
            "重复：全切双眼皮",
        ),
        ({"spending/mid": 9000}, "spending", "mid 9000"),
        ({"business/slogan": "x"}, "business.slogan", "Extra inputs are not permitted"),
        ({"label_groups/1/labels/0/description": "  "}, "description", "at least 4"),
        ({"sales_sections/0/heading": "Aesthetic消费"}, "heading", "中文"),
        ({"sales_sections/0/heading": "医美项目"}, "heading", "以“消费”结尾"),
        ({"intent/rules/0/when": "label == 不存在的标签"}, "intent", "未声明的标签"),
        ({"intent/rules/2/when": "days_since_signup > 3"}, "when", "未知事实"),
        ({"label_groups/2/labels/2/requires": "order_count >= many"}, "requires", "需要数字"),
        ({"anomalies/1/kind": "moon_phase"}, "anomalies.1", "does not match"),
    ],
)
def test_spec_errors_name_the_file_and_field(changes, field, fragment) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_mutated(**changes), "my_clinic.toml")
    message = str(caught.value)
    assert "my_clinic.toml" in message
    assert field in message
    assert fragment in message


def test_load_spec_errors_for_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="找不到业务规格文件"):
        load_spec(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[business\nname = 1", encoding="utf-8")
    with pytest.raises(SpecError, match="不是合法的 TOML"):
        load_spec(broken)


def test_a_bad_spec_stops_the_definitions_before_any_asset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CLINIC_TEXT.replace("high = 6000", "high = 600"), encoding="utf-8")
    with pytest.raises(SpecError, match=r"mid 1000\.0 应小于 high 600\.0"):
        build_definitions(Settings(data_dir=tmp_path, spec=str(bad)))


# --- part hashes → code versions ------------------------------------------------------------
def _changed_parts(data: dict) -> set[str]:
    other = parse_spec(data)
    parts = ("documents", "questions", "profiles", "segments", "report", "quality")
    return {p for p in parts if other.part_hash(p) != CLINIC.part_hash(p)}


def test_part_hashes_follow_what_each_asset_reads() -> None:
    assert _changed_parts(_clinic_data()) == set()
    assert _changed_parts(_mutated(**{"sales_sections/0/heading": "手术项目消费"})) == {"documents"}
    assert _changed_parts(_mutated(**{"questions/0/text": "用户花了多少钱，买了哪些项目？"})) == {
        "questions"
    }
    assert _changed_parts(_mutated(**{"spending/high": 8000})) == {"profiles", "report"}
    assert _changed_parts(_mutated(**{"anomalies/1/min_messages": 9})) == {"profiles", "quality"}
    assert _changed_parts(
        _mutated(**{"label_groups/0/labels/0/description": "想开刀做宽一点的双眼皮"})
    ) == {"profiles", "segments", "report", "quality"}


def _code_versions(spec: ProfileSpec, tmp_path: Path) -> dict[str, str | None]:
    defs = build_definitions(Settings(data_dir=tmp_path), spec)
    versions: dict[str, str | None] = {}
    for node in defs.resolve_asset_graph().asset_nodes:
        versions[node.key.to_user_string()] = node.code_version
    return versions


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sales_sections/0/heading": "手术项目消费"}, {"user_documents"}),
        ({"questions/3/text": "用户是否打算最近预约或付款？"}, {"profile_evidence"}),
        ({"spending/mid": 1500}, {"user_profiles", "cohort_report"}),
        (
            {"label_groups/2/labels/0/aliases": ["团购券"]},
            {"user_profiles", "user_segments", "cohort_report", "profile_quality"},
        ),
        ({"vocabulary": "open"}, {"user_profiles"}),
    ],
)
def test_a_spec_change_changes_exactly_the_affected_code_versions(
    changes, expected, tmp_path: Path
) -> None:
    before = _code_versions(CLINIC, tmp_path)
    after = _code_versions(parse_spec(_mutated(**changes)), tmp_path)
    assert {k for k in before if before[k] != after[k]} == expected


@pytest.fixture(scope="module")
def persisted(tmp_path_factory: pytest.TempPathFactory):
    """Source → evidence of every cohort on a persistent instance, as a user's demo leaves it."""
    data = tmp_path_factory.mktemp("spec-data")
    settings = Settings(data_dir=data)
    cohorts = write_sample(settings.source_path, users=3, seed=5, months=2)
    instance = add_cohorts(open_instance(settings), cohorts)
    results = run_cohorts(profile_job(settings), instance, cohorts, UP_TO_EVIDENCE)
    assert all(result.success for result in results.values())
    return settings, cohorts


def test_backfill_dry_run_after_a_spec_change_lists_the_assets(
    persisted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    settings, cohorts = persisted
    changed = tmp_path / "clinic_v2.toml"
    renamed = CLINIC_TEXT.replace('heading = "皮肤项目消费"', 'heading = "皮肤护理消费"')
    changed.write_text(renamed, encoding="utf-8")
    monkeypatch.setenv("PROFILING_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROFILING_SPEC", "clinic")
    assert main(["backfill", "--stale", "--dry-run"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    monkeypatch.setenv("PROFILING_SPEC", str(changed))
    assert main(["backfill", "--stale", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "changed: user_documents\n" in out
    listed = out.split("backfill assets: ")[1].splitlines()[0].split(", ")
    assert "user_documents" in listed
    assert {"document_chunks", "chunk_embeddings", "user_profiles", "cohort_report"} <= set(listed)
    assert "users" not in listed
    assert all(c in out for c in cohorts)


# --- the CLI ---------------------------------------------------------------------------------
def test_spec_check_and_init(tmp_path: Path, capsys) -> None:
    assert main(["spec", "check", "skincare_shop"]) == 0
    out = capsys.readouterr().out
    assert "业务规格有效" in out and "标签组" in out and "异常规则" in out
    target = tmp_path / "mine.toml"
    assert main(["spec", "init", "--out", str(target)]) == 0
    assert load_spec(target).business.name == "我的门店"
    assert main(["spec", "init", "--out", str(target)]) == 1  # never overwrites silently
    target.write_text(target.read_text(encoding="utf-8").replace("high = 5000", "high = 5"))
    assert main(["spec", "check", str(target)]) == 1
    assert "mid 1000.0 应小于 high 5.0" in capsys.readouterr().err


# --- conditions, facts, rules -----------------------------------------------------------------
def test_conditions_parse_and_evaluate() -> None:
    cond = parse_condition("order_count >= 2 and spending_level == 高 且 label == 准备预约")
    facts = {"order_count": 3, "spending_level": "高"}
    assert cond.holds(facts, {"准备预约"})
    assert not cond.holds(facts, set())
    assert not cond.holds({"order_count": 1, "spending_level": "高"}, {"准备预约"})
    assert not parse_condition("days_since_last_purchase < 30").holds({"order_count": 0})
    for bad in ("", "order_count >=", "spending_level > 高", "weather == 晴"):
        with pytest.raises(ConditionError):
            parse_condition(bad)


def test_quantile_spending_follows_the_cohort() -> None:
    spending = Spending(mode="quantile", high_quantile=0.8, mid_quantile=0.4)
    totals = pl.Series([0.0, 0.0, 100.0, 200.0, 300.0, 400.0, 500.0])
    assert spend_thresholds(spending, totals) == SpendThresholds(400.0, 200.0)
    fixed = Spending(mode="fixed", high=6000, mid=1000)
    assert spend_thresholds(fixed, totals) == SpendThresholds(6000.0, 1000.0)


def test_facts_carry_the_spec_level_and_recent_counts() -> None:
    users = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "gender": ["女", "男"],
            "age": [30, 40],
            "city": ["上海", "北京"],
            "signup_date": [date(2025, 1, 1)] * 2,
            "cohort": ["2025-01"] * 2,
        }
    )
    sales = pl.DataFrame(
        {
            "order_id": ["o1", "o2"],
            "user_id": ["a", "b"],
            "item": ["x", "y"],
            "category": ["c", "c"],
            "amount": [900.0, 120.0],
            "order_date": [date(2025, 3, 20), date(2025, 1, 2)],
        }
    )
    chat = pl.DataFrame(
        {
            "message_id": ["m1", "m2"],
            "user_id": ["a", "a"],
            "message": ["hi", "hi"],
            "sent_at": [datetime(2025, 3, 25), datetime(2025, 1, 5)],
            "channel": ["微信", "微信"],
        },
        schema_overrides={"sent_at": pl.Datetime("us")},
    )
    behaviour = pl.DataFrame(
        schema={
            "event_id": pl.String,
            "user_id": pl.String,
            "event_type": pl.String,
            "target": pl.String,
            "event_time": pl.Datetime("us"),
        }
    )
    facts = compute_user_facts(
        users,
        sales,
        behaviour,
        chat,
        date(2025, 3, 31),
        Spending(mode="fixed", high=800, mid=100),
        recent_days=30,
    )
    rows = {r["user_id"]: r for r in facts.iter_rows(named=True)}
    assert rows["a"]["spending_level"] == "高" and rows["b"]["spending_level"] == "中"
    assert rows["a"]["recent_order_count"] == 1 and rows["b"]["recent_order_count"] == 0
    assert rows["a"]["recent_chat_count"] == 1
    assert rows["a"]["days_since_last_purchase"] == 11


def _candidate(kind: str, label: str, score: float) -> LabelCandidate:
    return LabelCandidate(kind=kind, label=label, score=score, chunk_id="c1")


def test_intent_rules_first_match_wins_and_default_applies() -> None:
    policy = build_policy(CLINIC)
    facts = UserFacts(user_id="u", cohort="c", as_of=date(2025, 6, 30), days_since_last_activity=5)
    booked = [_candidate("intent_signal", "准备预约", 0.2)]
    assert decide_intent(policy, facts, booked)[0] == "高"
    # a faint embedder lead is not enough for a rule: no rule holds, the model decides
    faint = [_candidate("intent_signal", "准备预约", 0.01)]
    assert decide_intent(policy, facts, faint) == (None, "")
    named = [_candidate("intent_signal", "只是了解", 0.16)]
    assert decide_intent(policy, facts, named) == ("低", "用户表示只是了解、暂不考虑")
    idle = facts.model_copy(update={"days_since_last_activity": 200})
    assert decide_intent(policy, idle, [])[0] == "低"
    with_default = build_policy(parse_spec(_mutated(**{"intent/default": "中"})))
    assert decide_intent(with_default, facts, faint) == ("中", "没有规则成立，按规格默认等级")


def _profile(**values) -> UserProfile:
    base = {
        name: {"value": [], "evidence": [], "confidence": 0.5, "basis": "inferred"}
        for name in ("tags", "intended_projects", "concerns", "recommendation_reasons", "anomalies")
    }
    for name in ("interest_summary", "portrait", "next_action"):
        base[name] = {"value": "", "evidence": [], "confidence": 0.5, "basis": "inferred"}
    base["spending_level"] = {"value": "低", "evidence": [], "confidence": 0.5, "basis": "inferred"}
    base["purchase_intent"] = {
        "value": "低",
        "probability": 0.2,
        "evidence": [],
        "confidence": 0.5,
        "basis": "inferred",
    }
    for name, value in values.items():
        base[name]["value"] = value
    return UserProfile.model_validate(base)


def test_rule_intent_overrides_the_model_and_requires_drop_labels() -> None:
    policy = build_policy(CLINIC)
    facts = UserFacts(user_id="u", cohort="c", as_of=date(2025, 6, 30), order_count=1)
    profile = _profile(tags=["复购客户", "学生党"])
    verdict = RuleVerdict(intent_level="高", intent_reason="用户提到预约")
    fixed, repaired = repair_fact_contradictions(profile, facts, policy, verdict)
    assert fixed.purchase_intent.value == "高" and fixed.purchase_intent.probability >= 0.7
    assert fixed.tags.value == ["学生党"]  # 复购客户 requires order_count >= 2
    assert repaired == ["purchase_intent", "tags"]


def test_vocabulary_closed_maps_aliases_and_drops_the_rest_open_keeps_and_reports() -> None:
    profile = _profile(intended_projects=["割双眼皮", "纹眉"], tags=["价格敏感"])
    closed, novel = apply_vocabulary(profile, build_policy(CLINIC))
    assert closed.intended_projects.value == ["全切双眼皮"] and novel == []
    open_spec = parse_spec(_mutated(vocabulary="open"))
    opened, novel = apply_vocabulary(profile, build_policy(open_spec))
    assert opened.intended_projects.value == ["全切双眼皮", "纹眉"]
    assert novel == ["纹眉"]


def test_full_schema_restricts_label_fields_to_the_closed_vocabulary() -> None:
    from profiling_assets.core.profiling.schema import profile_json_schema

    policy = build_policy(CLINIC)
    schema = profile_json_schema(["c1"], vocabulary=dict(policy.vocabulary))
    items = schema["properties"]["intended_projects"]["properties"]["value"]["items"]
    assert items["enum"] == list(CLINIC.label_names("intended_projects"))
    assert isinstance(ListField.model_fields["value"].annotation, object)


class _FlatEmbedder:
    """Every text the same vector: embedder scores carry no information at all."""

    identity = "flat|test|1|4"

    def embed_queries(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32) / 2.0

    def embed_passages(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32) / 2.0


def test_a_label_named_literally_is_found_where_the_embedder_sees_nothing() -> None:
    from profiling_assets.core.label_scoring import LabelIndex

    policy = build_policy(CLINIC)
    index = LabelIndex(_FlatEmbedder(), policy.labels)
    said = ("c-chat", "## 用户发言\n- 2025-03-02 在微信说：“想问问割双眼皮多少钱”")
    bought = ("c-sales", "## 消费记录\n### 医美项目消费\n- 项目：隆鼻；金额：9000 元")
    hits = keyword_hits(index.labels, [bought, said])
    named = {index.labels[i].name: chunk for i, chunk in hits.items()}
    assert named["全切双眼皮"] == "c-chat"  # alias 割双眼皮, in the user's own words
    assert named["价格"] == "c-chat"  # alias 多少钱
    assert "隆鼻" not in named  # a past purchase is a fact, not a wish
    vectors = index.embedder.embed_passages(["x", "y"])
    candidates = score_label_candidates(
        index, ["c-sales", "c-chat"], vectors, top_per_kind=1, hits=hits
    )
    top_project = next(c for c in candidates if c.kind == "project")
    assert top_project.label == "全切双眼皮" and top_project.chunk_id == "c-chat"
    assert top_project.score >= KEYWORD_BOOST


def test_doctor_reports_the_spec(tmp_path: Path) -> None:
    from profiling_assets.commands.doctor import check_spec

    (finding,) = check_spec(Settings(data_dir=tmp_path, spec="skincare_shop"))
    assert finding.ok and "skincare_shop.toml" in finding.detail
    bad = tmp_path / "bad.toml"
    bad.write_text(CLINIC_TEXT.replace('vocabulary = "closed"', 'vocabulary = "fuzzy"'))
    (finding,) = check_spec(Settings(data_dir=tmp_path, spec=str(bad)))
    assert not finding.ok and finding.blocking and "vocabulary" in finding.detail


def test_rule_evidence_adds_the_chunks_rules_rest_on_and_the_key_follows_the_spec() -> None:
    from profiling_assets.core.anomalies import AnomalyFinding
    from profiling_assets.core.label_scoring import LabelIndex
    from profiling_assets.core.profiling.plan import RULE_QUESTION_ID, input_key, rule_evidence

    policy = build_policy(CLINIC)
    index = LabelIndex(_FlatEmbedder(), policy.labels)
    chunks = pl.DataFrame(
        {
            "user_id": ["u"] * 3,
            "chunk_id": ["c1", "c2", "c3"],
            "heading_path": ["用户发言", "消费记录", "用户发言"],
            "text": [
                "## 用户发言\n- 2025-03-02 在微信说：“做完多久能消肿？”",
                "## 消费记录\n### 医美项目消费\n- 项目：隆鼻；金额：90000 元",
                "## 用户发言\n- 2025-03-03 在微信说：“好的”",
            ],
            "source_ids": [["m1"], ["o9"], ["m2"]],
        }
    )
    finding = AnomalyFinding(user_id="u", anomaly="异常大额消费", source_ids=["o9"], detail="x")
    extra, anomaly_chunks = rule_evidence("u", chunks, [], index, [finding])
    assert {e.chunk_id for e in extra} == {"c1", "c2"}  # 消肿 names 恢复期; o9 sits in c2
    assert all(e.question_id == RULE_QUESTION_ID and e.user_id == "u" for e in extra)
    assert anomaly_chunks == {"异常大额消费": ["c2"]}
    facts = UserFacts(user_id="u", cohort="c", as_of=date(2025, 6, 30))
    keys = {
        input_key(facts, extra, [], "llm", "p", RuleVerdict(), spec)
        for spec in ("spec-profiles-a", "spec-profiles-b")
    }
    assert len(keys) == 2
    verdicts = {
        input_key(facts, extra, [], "llm", "p", RuleVerdict(intent_level=level), "s")
        for level in ("高", "低")
    }
    assert len(verdicts) == 2


def test_rule_only_labels_are_not_shown_to_the_model_as_candidates() -> None:
    from profiling_assets.core.profiling.prompt import build_profile_messages

    policy = build_policy(CLINIC)
    facts = UserFacts(user_id="u", cohort="c", as_of=date(2025, 6, 30))
    candidates = [_candidate("intent_signal", "准备预约", 0.02), _candidate("tag", "学生党", 0.05)]
    for compact in (True, False):
        user = build_profile_messages(facts, [], candidates, 1800, policy=policy, compact=compact)[
            -1
        ]["content"]
        assert "学生党" in user and "准备预约" not in user
    verdict = RuleVerdict(intent_level="高", intent_reason="用户提到预约、定金或具体时间")
    user = build_profile_messages(facts, [], [], 1800, policy=policy, verdict=verdict)[-1]
    assert "规则判定的购买意向：高（用户提到预约、定金或具体时间）" in user["content"]


def test_a_value_copying_the_field_glossary_is_dropped_not_refused() -> None:
    from profiling_assets.core.profiling.answer import clean_profile, find_prompt_leaks

    profile = _profile(tags=["学生党", "学生portrait"])
    profile = profile.model_copy(
        update={
            "portrait": profile.portrait.model_copy(
                update={"value": "行为画像，recommendation_", "evidence": ["c1"]}
            )
        }
    )
    cleaned = clean_profile(profile)
    assert cleaned.portrait.value == "" and cleaned.portrait.evidence == []
    assert cleaned.tags.value == ["学生党"]
    assert find_prompt_leaks(cleaned) == []
    assert find_prompt_leaks(profile)  # left in, it would have failed the profile as a leak
