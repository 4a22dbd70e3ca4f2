"""Profile quality: every score on hand-built truth with a known answer, and `eval` end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from profiling_assets.commands.evaluate import (
    EXIT_BAD_SOURCE,
    SCORES_FILE,
    check_eval_source,
    run_eval,
)
from profiling_assets.config import Settings
from profiling_assets.core.quality import (
    METRIC_LABELS,
    QualityScores,
    combine_scores,
    normalize_truth,
    render_scores,
    score_profiles,
    summary_markdown,
)
from profiling_assets.core.records import UserFacts
from profiling_assets.stores.source import open_source, read_cohort_table
from profiling_assets.synth import generate_tables, write_source


def _field(value: Any, evidence: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "value": value,
        "evidence": evidence or [],
        "confidence": 0.8,
        "basis": "inferred",
        **extra,
    }


def profile(
    tags: Sequence[str] = (),
    projects: Sequence[str] = (),
    concerns: Sequence[str] = (),
    anomalies: Sequence[str] = (),
    spending: str = "中",
    intent: str = "中",
    probability: float = 0.5,
    cited: list[str] | None = None,
) -> dict[str, Any]:
    """A valid `UserProfile` dict; citations only on `tags`, so their count is known."""
    return {
        "tags": _field(list(tags), cited),
        "interest_summary": _field("关注眼部项目"),
        "spending_level": _field(spending),
        "intended_projects": _field(list(projects)),
        "concerns": _field(list(concerns)),
        "portrait": _field("常在晚上咨询"),
        "recommendation_reasons": _field([]),
        "anomalies": _field(list(anomalies)),
        "next_action": _field("推送案例"),
        "purchase_intent": _field(intent, probability=probability),
    }


def truth_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        "user_id": pl.String,
        "intended_project": pl.String,
        "spending_level": pl.String,
        "purchase_intent": pl.String,
        "concerns": pl.List(pl.String),
        "tags": pl.List(pl.String),
        "anomalies": pl.List(pl.String),
        "signal_ids": pl.List(pl.String),
    }
    return pl.DataFrame(rows, schema=schema)


def facts_of(user: str, spend: float = 2000.0, orders: int = 2) -> UserFacts:
    return UserFacts(
        user_id=user,
        cohort="2025-01",
        as_of=date(2025, 3, 1),
        total_spend=spend,
        order_count=orders,
    )


TRUTH = truth_frame(
    [
        {
            "user_id": "U1",
            "intended_project": "全切双眼皮",
            "spending_level": "中",
            "purchase_intent": "中",
            "concerns": ["恢复期", "价格"],
            "tags": ["价格敏感", "犹豫观望"],
            "anomalies": [],
            "signal_ids": ["S1", "S2"],
        },
        {
            "user_id": "U2",
            "intended_project": "热玛吉",
            "spending_level": "高",
            "purchase_intent": "高",
            "concerns": ["疼痛"],
            "tags": ["高消费"],
            "anomalies": ["异常大额消费"],
            "signal_ids": ["S3", "S4"],
        },
    ]
)
# U1: chunks c1 (S1), c2 (S2); U2: c3 (S3), c4 (S4 and S3). Evidence: c1, c3.
CHUNKS = pl.DataFrame(
    {
        "user_id": ["U1", "U1", "U2", "U2"],
        "chunk_id": ["c1", "c2", "c3", "c4"],
        "source_ids": [["S1"], ["S2"], ["S3"], ["S4", "S3"]],
    }
)
EVIDENCE = pl.DataFrame({"user_id": ["U1", "U1", "U2"], "chunk_id": ["c1", "c1", "c3"]})
FACTS = {"U1": facts_of("U1"), "U2": facts_of("U2", spend=30000.0, orders=3)}

PERFECT = {
    "U1": profile(
        ["价格敏感", "犹豫观望"], ["全切双眼皮"], ["恢复期", "价格"], cited=["c1"], intent="中"
    ),
    "U2": profile(
        ["高消费"],
        ["热玛吉"],
        ["疼痛"],
        ["异常大额消费"],
        spending="高",
        intent="高",
        probability=0.8,
        cited=["c3"],
    ),
}
WRONG = {
    "U1": profile(
        ["高消费"],
        ["隆鼻"],
        ["疼痛"],
        ["异常大额消费"],
        spending="高",
        intent="高",
        probability=0.8,
        cited=["c3"],
    ),
    "U2": profile(
        ["学生党"], [], ["价格"], spending="低", intent="低", probability=0.1, cited=["c1"]
    ),
}


def test_perfect_profiles_score_one_everywhere() -> None:
    scores = score_profiles(TRUTH, PERFECT, EVIDENCE, CHUNKS, FACTS)
    assert scores.num_users == scores.num_truth_users == 2
    for name in (
        "profile_coverage",
        "tag_precision",
        "tag_recall",
        "tag_f1",
        "project_accuracy",
        "project_top1_accuracy",
        "spending_accuracy",
        "intent_accuracy",
        "concern_recall",
        "anomaly_precision",
        "anomaly_recall",
        "citation_validity",
    ):
        assert getattr(scores, name) == 1.0, name
    assert scores.num_contradictions == 0 and scores.num_unchecked_profiles == 0
    assert scores.num_citations == 2
    # S2 lives only in c2 (not evidence); S4 only in c4 → 2 of 4 signals reach the evidence.
    assert scores.evidence_recall == 0.5
    assert scores.signal_coverage == 1.0 and scores.num_signals == 4


def test_wrong_profiles_score_zero_everywhere() -> None:
    scores = score_profiles(TRUTH, WRONG, EVIDENCE, CHUNKS, FACTS)
    for name in (
        "tag_precision",
        "tag_recall",
        "tag_f1",
        "project_accuracy",
        "project_top1_accuracy",
        "spending_accuracy",
        "intent_accuracy",
        "concern_recall",
        "anomaly_precision",
        "anomaly_recall",
        "citation_validity",
    ):
        assert getattr(scores, name) == 0.0, name
    assert scores.num_citations == 2  # each cites the other user's chunk


def test_partial_profiles_give_the_expected_fractions() -> None:
    profiles = {
        # tags: 1 hit of 2 predicted; project second in the list; 1 of 2 concerns
        "U1": profile(["价格敏感", "学生党"], ["隆鼻", "全切双眼皮"], ["价格"], cited=["c1", "c2"]),
        # tags: 0 of 0 predicted, 1 missed; anomaly missed; intent right, spending wrong
        "U2": profile([], ["热玛吉"], ["疼痛"], spending="中", intent="高", probability=0.8),
    }
    scores = score_profiles(TRUTH, profiles, EVIDENCE, CHUNKS, FACTS)
    assert scores.tag_precision == pytest.approx(1 / 2)
    assert scores.tag_recall == pytest.approx(1 / 3)
    assert scores.tag_f1 == pytest.approx(2 * 1 / (2 + 3))
    assert scores.project_accuracy == 1.0
    assert scores.project_top1_accuracy == 0.5
    assert scores.spending_accuracy == 0.5
    assert scores.intent_accuracy == 1.0
    assert scores.concern_recall == pytest.approx(2 / 3)
    assert scores.anomaly_precision is None  # nobody flagged: not measurable
    assert scores.anomaly_recall == 0.0
    assert scores.citation_validity == 0.5  # c2 is U1's chunk but not in its evidence


def test_empty_denominators_are_none_not_zero() -> None:
    truth = truth_frame(
        [
            {
                "user_id": "U1",
                "intended_project": None,
                "spending_level": None,
                "purchase_intent": None,
                "concerns": [],
                "tags": [],
                "anomalies": [],
                "signal_ids": [],
            }
        ]
    )
    scores = score_profiles(truth, {"U1": profile()}, pl.DataFrame(), pl.DataFrame())
    assert scores.num_users == 1
    for name in (
        "tag_precision",
        "tag_f1",
        "project_accuracy",
        "spending_accuracy",
        "intent_accuracy",
        "concern_recall",
        "anomaly_precision",
        "anomaly_recall",
        "citation_validity",
        "evidence_recall",
    ):
        assert getattr(scores, name) is None, name
    assert scores.num_unchecked_profiles == 1  # no facts given


def test_missing_profiles_lower_coverage_not_rates() -> None:
    scores = score_profiles(TRUTH, {"U1": PERFECT["U1"]}, EVIDENCE, CHUNKS, FACTS)
    assert scores.num_users == 1 and scores.num_truth_users == 2
    assert scores.profile_coverage == 0.5
    assert scores.tag_f1 == 1.0
    assert score_profiles(TRUTH, {}, EVIDENCE, CHUNKS).profile_coverage == 0.0


def test_nothing_items_are_not_anomalies() -> None:
    profiles = {u: profile(anomalies=["无异常"]) for u in ("U1", "U2")}
    scores = score_profiles(TRUTH, profiles, EVIDENCE, CHUNKS)
    assert scores.anomaly_precision is None and scores.anomaly_recall == 0.0


@pytest.mark.parametrize("as_what", ["model", "dict", "json"])
def test_contradictions_are_counted_from_facts(as_what: str) -> None:
    broke = facts_of("U1", spend=0.0, orders=0)
    given = {"model": broke, "dict": broke.model_dump(), "json": broke.model_dump_json()}[as_what]
    # 高 spending with no orders (1) and 高 intent at probability 0.1 (outside its band: 1).
    profiles = {"U1": profile(spending="高", intent="高", probability=0.1), "U2": PERFECT["U2"]}
    scores = score_profiles(TRUTH, profiles, EVIDENCE, CHUNKS, {"U1": given})
    assert scores.num_contradictions == 2
    assert scores.num_unchecked_profiles == 1  # U2 has no facts


@pytest.mark.parametrize(
    "cell",
    [
        '["价格敏感", "犹豫观望"]',
        "[价格敏感, 犹豫观望]",
        "价格敏感|犹豫观望",
        "价格敏感、犹豫观望",
        ["价格敏感", "犹豫观望"],
    ],
)
def test_truth_lists_from_csv_text(cell: Any) -> None:
    frame = pl.DataFrame({"user_id": ["U1"], "tags": [cell]})
    assert normalize_truth(frame)["tags"].to_list() == [["价格敏感", "犹豫观望"]]


def test_combine_weights_each_rate_by_what_it_is_a_share_of() -> None:
    """Overall = the micro average over all cohorts' items, not a users-weighted mean of
    rates: 9 + 8 users with their one anomaly found and 8 users with one missed is 2 of 3
    anomalies (0.667), not (9 + 8 + 0) / 25 = 0.68 (the outsider's dealership eval)."""
    a = QualityScores(num_users=9, anomaly_recall=1.0, num_truth_anomalies=1, spending_accuracy=1.0)
    b = QualityScores(num_users=8, anomaly_recall=1.0, num_truth_anomalies=1, spending_accuracy=1.0)
    c = QualityScores(num_users=8, anomaly_recall=0.0, num_truth_anomalies=1, spending_accuracy=0.5)
    overall = combine_scores([a, b, c])
    assert overall.anomaly_recall == pytest.approx(2 / 3)
    assert overall.spending_accuracy == pytest.approx((9 + 8 + 4) / 25)  # a share of users
    tags = combine_scores(
        [
            QualityScores(num_users=1, tag_f1=0.0, num_predicted_tags=1, num_truth_tags=1),
            QualityScores(num_users=3, tag_f1=1.0, num_predicted_tags=6, num_truth_tags=6),
        ]
    )
    assert tags.tag_f1 == pytest.approx(12 / 14)  # 2·hits / (predicted + true), all cohorts


def test_combine_counts_add_up() -> None:
    small = QualityScores(num_users=1, num_truth_users=1, tag_f1=0.0, num_contradictions=1)
    big = QualityScores(num_users=3, num_truth_users=4, tag_f1=1.0, anomaly_recall=0.5)
    overall = combine_scores([small, big])
    assert overall.num_users == 4 and overall.num_truth_users == 5
    assert overall.anomaly_recall == 0.5  # only `big` measured it
    assert overall.profile_coverage == pytest.approx(4 / 5)
    assert overall.num_contradictions == 1
    table = render_scores({"2025-01": small, "overall": overall})
    assert all(label in table for label in METRIC_LABELS.values())
    assert "标签 F1" in summary_markdown(overall)


# -- the command ----------------------------------------------------------------------------


def _write_csv_folder(folder: Path, tables: dict[str, pl.DataFrame]) -> None:
    folder.mkdir(parents=True)
    for name, frame in tables.items():
        lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
        frame.with_columns(
            pl.col(c).map_elements(lambda v: json.dumps(list(v), ensure_ascii=False), pl.String)
            for c in lists
        ).write_csv(folder / f"{name}.csv")


def test_csv_folder_source_reads_truth_like_duckdb(tmp_path: Path) -> None:
    tables = generate_tables(users=5, seed=5, months=1, style="alt")
    write_source(tmp_path / "src.duckdb", tables)
    _write_csv_folder(tmp_path / "csvsrc", tables)
    assert check_eval_source(tmp_path / "csvsrc") == check_eval_source(tmp_path / "src.duckdb")
    cohort = check_eval_source(tmp_path / "csvsrc")[0]
    read = []
    for source in (tmp_path / "src.duckdb", tmp_path / "csvsrc"):
        with open_source(source) as con:
            read.append(normalize_truth(read_cohort_table(con, "truth", cohort)).sort("user_id"))
    assert read[0].equals(read[1])
    assert read[0].height == 5 and read[0]["signal_ids"].list.len().min() > 0


def test_eval_refuses_a_source_without_truth(tmp_path: Path, capsys) -> None:
    tables = generate_tables(users=2, seed=1, months=1)
    tables.pop("truth")
    write_source(tmp_path / "plain.duckdb", tables)
    settings = Settings(data_dir=tmp_path / "main")
    assert run_eval(settings, tmp_path / "plain.duckdb") == EXIT_BAD_SOURCE
    assert "truth" in capsys.readouterr().out
    assert run_eval(settings, tmp_path / "absent.duckdb") == EXIT_BAD_SOURCE
    assert not (tmp_path / "main").exists()


def test_eval_refuses_the_main_data_dir(tmp_path: Path, capsys) -> None:
    write_source(tmp_path / "src.duckdb", generate_tables(users=1, seed=1, months=1))
    settings = Settings(data_dir=tmp_path / "main")
    assert run_eval(settings, tmp_path / "src.duckdb", tmp_path / "main") == EXIT_BAD_SOURCE
    assert "主数据目录" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_end_to_end_on_unseen_wording(tmp_path: Path, monkeypatch, capsys) -> None:
    """3 users in the alt wording through every asset with the real offline models."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored afterwards
    source = tmp_path / "alt.duckdb"
    write_source(source, generate_tables(users=3, seed=99, months=1, style="alt"))
    settings = Settings(data_dir=tmp_path / "main")
    assert run_eval(settings, source) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out[out.index("评估结果") :])
    eval_dir = tmp_path / "main" / "eval" / "alt"
    report = json.loads((eval_dir / SCORES_FILE).read_text(encoding="utf-8"))
    overall = QualityScores(**report["overall"])
    assert overall.num_truth_users == 3 and overall.num_users >= 1
    assert overall.citation_validity == 1.0  # the grammar only allows the user's evidence ids
    assert overall.evidence_recall is not None and overall.signal_coverage == 1.0
    assert not (tmp_path / "main" / "warehouse.duckdb").exists()  # main data dir untouched
    with duckdb.connect(str(eval_dir / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT cohort, run_id, llm_identity FROM profile_quality").fetchall()
    assert len(rows) == len(report["cohorts"]) and all(r[2] for r in rows)
