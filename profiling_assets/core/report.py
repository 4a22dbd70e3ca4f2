"""The cohort report: Chinese Markdown with text bar charts, and the same numbers as metadata.

Charts are Unicode block bars inside fenced code blocks: the Dagster UI renders Markdown but
no images or HTML, and a code block keeps the bars aligned in a monospace font.

Profiles arrive as plain dicts shaped like `UserProfile.model_dump()`
(`{"tags": {"value": [...]}, "purchase_intent": {"value": "高", "probability": 0.8}, ...}`);
any missing key or field counts as "not stated" rather than failing the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from profiling_assets.core.facts import RFM_SEGMENTS, SpendThresholds
from profiling_assets.core.text import display_width, pad_to_width

BAR_WIDTH = 24
# Eighth blocks give a bar 8× the resolution of whole characters.
_EIGHTHS = " ▏▎▍▌▋▊▉"
_FULL = "█"
TOP_N = 12
INTENT_LEVELS = ("高", "中", "低")
_INTENT_KEYS = {"高": "high", "中": "medium", "低": "low"}
UNSTATED = "未判断"

# Without a spec's `top`, the big-spender bucket starts at this multiple of the 高 threshold.
TOP_OVER_HIGH = 3.0


@dataclass(frozen=True)
class ReportSpec:
    """What the report takes from the business spec: its name, money unit and thresholds."""

    business: str
    currency: str
    thresholds: SpendThresholds
    # Where the big-spender bucket starts; None: `TOP_OVER_HIGH` times the 高 threshold.
    top: float | None


def spend_buckets(spec: ReportSpec) -> tuple[tuple[str, str, float, float], ...]:
    """Spend buckets [low, high) cut at the spending thresholds plus one for big spenders;
    the first bucket (high = 0) holds users who spent nothing."""
    mid, high = spec.thresholds.mid, spec.thresholds.high
    top = spec.top or high * TOP_OVER_HIGH
    unit = spec.currency
    return (
        ("未消费", "spend_none", 0.0, 0.0),
        (f"<{mid:,.0f} {unit}", "spend_below_mid", 0.0, mid),
        (f"{mid:,.0f}–{high:,.0f} {unit}", "spend_mid_to_high", mid, high),
        (f"{high:,.0f}–{top:,.0f} {unit}", "spend_high_to_top", high, top),
        (f"≥{top:,.0f} {unit}", "spend_top", top, float("inf")),
    )


@dataclass(frozen=True)
class CohortNumbers:
    """Everything the report shows, computed once for both the Markdown and the metadata."""

    num_users: int
    num_buyers: int
    total_spend: float
    num_profiles: int
    tags: list[tuple[str, int]]
    projects: list[tuple[str, int]]
    intents: list[tuple[str, int]]
    avg_intent_probability: float | None
    segments: list[tuple[str, int]]
    rfm: list[tuple[str, int]]
    spend: list[tuple[str, str, int]]  # (label, metadata key, users)
    concerns: list[tuple[str, int]]
    anomalies: list[tuple[str, int]]


def _field(profile: Mapping[str, Any], key: str, attr: str = "value") -> Any:
    field = profile.get(key)
    return field.get(attr) if isinstance(field, Mapping) else None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Iterable):
        return [str(v) for v in value if v]
    return []


def _count_lists(profiles: Sequence[Mapping[str, Any]], key: str) -> list[tuple[str, int]]:
    # A user counts once per value even if the LLM repeated it.
    counts = Counter(v for p in profiles for v in set(_as_list(_field(p, key))))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _in_bucket(spend: pl.Series, low: float, high: float) -> pl.Series:
    if high == 0:
        return spend <= 0
    return (spend > 0) & (spend >= low) & (spend < high)


def _intents(profiles: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, int]], float | None]:
    counts = Counter(str(_field(p, "purchase_intent") or UNSTATED) for p in profiles)
    order = [*INTENT_LEVELS, *sorted(set(counts) - set(INTENT_LEVELS))]
    probabilities = [
        float(prob)
        for p in profiles
        if isinstance(prob := _field(p, "purchase_intent", "probability"), int | float)
    ]
    average = sum(probabilities) / len(probabilities) if probabilities else None
    return [(level, counts[level]) for level in order], average


def cohort_numbers(
    facts_df: pl.DataFrame,
    profiles: Sequence[Mapping[str, Any]],
    segment_sizes: Mapping[str, int],
    spec: ReportSpec,
) -> CohortNumbers:
    """The report's distributions from the facts table, the profiles and segment name → size."""
    spend = facts_df["total_spend"]
    spend_rows = [
        (label, key, int(_in_bucket(spend, lo, hi).sum()))
        for label, key, lo, hi in spend_buckets(spec)
    ]
    rfm = Counter(facts_df["rfm_segment"].to_list())
    intents, avg_probability = _intents(profiles)
    return CohortNumbers(
        num_users=facts_df.height,
        num_buyers=int((facts_df["order_count"] > 0).sum()),
        total_spend=float(spend.sum()),
        num_profiles=len(profiles),
        tags=_count_lists(profiles, "tags"),
        projects=_count_lists(profiles, "intended_projects"),
        intents=intents,
        avg_intent_probability=avg_probability,
        segments=sorted(segment_sizes.items(), key=lambda kv: (-kv[1], kv[0])),
        rfm=[(s, rfm[s]) for s in RFM_SEGMENTS if rfm[s]],
        spend=spend_rows,
        concerns=_count_lists(profiles, "concerns"),
        anomalies=_count_lists(profiles, "anomalies"),
    )


def _bar(value: float, top: float) -> str:
    eighths = round(BAR_WIDTH * 8 * value / top) if top > 0 else 0
    full, rest = divmod(eighths, 8)
    return _FULL * full + (_EIGHTHS[rest] if rest else "")


def bar_chart(rows: Sequence[tuple[str, int]], empty: str = "（暂无数据）") -> str:
    """A fenced code block with one aligned bar per row, e.g. `全切双眼皮 ████████ 12`."""
    if not rows:
        return empty
    label_width = max(display_width(label) for label, _ in rows)
    top = max(value for _, value in rows)
    lines = [
        f"{pad_to_width(label, label_width)} {_bar(value, top)} {value}".rstrip()
        for label, value in rows
    ]
    return "\n".join(["```text", *lines, "```"])


def render_cohort_report(
    cohort: str,
    facts_df: pl.DataFrame,
    profiles: Sequence[Mapping[str, Any]],
    segment_sizes: Mapping[str, int],
    spec: ReportSpec,
    novel_labels: Mapping[str, int] | None = None,
) -> str:
    """The cohort's Chinese Markdown report: overview, then one chart per distribution.
    `novel_labels` (open vocabulary) are labels the model added outside the spec."""
    n = cohort_numbers(facts_df, profiles, segment_sizes, spec)
    avg_spend = n.total_spend / n.num_buyers if n.num_buyers else 0.0
    probability = f"{n.avg_intent_probability:.2f}" if n.avg_intent_probability is not None else "—"
    unit = spec.currency
    sections = [
        f"# 用户画像报告 · {spec.business} · {cohort}",
        "\n".join(
            [
                f"- 用户数：{n.num_users}",
                f"- 已生成画像：{n.num_profiles}",
                f"- 有消费用户：{n.num_buyers}",
                f"- 消费总额：{n.total_spend:,.0f} {unit}（消费用户人均 {avg_spend:,.0f} {unit}）",
                f"- 平均购买意向概率：{probability}",
            ]
        ),
        "## 用户标签分布",
        bar_chart(n.tags[:TOP_N]),
        "## 意向项目分布",
        bar_chart(n.projects[:TOP_N]),
        "## 关注点分布",
        bar_chart(n.concerns[:TOP_N]),
        "## 购买意向分布",
        bar_chart(n.intents),
        "## 异常分布",
        bar_chart(n.anomalies[:TOP_N], empty="（未发现异常）"),
        "## 用户分群",
        bar_chart(n.segments),
        "## RFM 分层",
        bar_chart(n.rfm),
        f"## 消费金额分布（{unit}）",
        bar_chart([(label, count) for label, _, count in n.spend]),
    ]
    if novel_labels:
        rows = sorted(novel_labels.items(), key=lambda kv: (-kv[1], kv[0]))
        sections += ["## 规格外标签（开放词表，模型新增）", bar_chart(rows[:TOP_N])]
    return "\n\n".join(sections) + "\n"


def report_numbers(
    facts_df: pl.DataFrame,
    profiles: Sequence[Mapping[str, Any]],
    segment_sizes: Mapping[str, int],
    spec: ReportSpec,
) -> dict[str, float]:
    """The report's numbers as flat metadata: fixed snake_case keys, plus one key per tag,
    project, segment and RFM segment prefixed `tag_`, `project_`, `segment_`, `rfm_`."""
    n = cohort_numbers(facts_df, profiles, segment_sizes, spec)
    numbers: dict[str, float] = {
        "num_users": n.num_users,
        "num_profiles": n.num_profiles,
        "num_buyers": n.num_buyers,
        "total_spend": round(n.total_spend, 2),
        "avg_spend_per_buyer": round(n.total_spend / n.num_buyers, 2) if n.num_buyers else 0,
        "num_segments": len(n.segments),
        "num_users_with_anomaly": sum(
            1 for p in profiles if [a for a in _as_list(_field(p, "anomalies")) if a]
        ),
    }
    if n.avg_intent_probability is not None:
        numbers["avg_intent_probability"] = round(n.avg_intent_probability, 4)
    for level, count in n.intents:
        numbers[f"intent_{_INTENT_KEYS.get(level, level)}"] = count
    numbers.update({f"num_{key}": count for _, key, count in n.spend})
    for prefix, rows in (
        ("tag", n.tags),
        ("project", n.projects),
        ("segment", n.segments),
        ("rfm", n.rfm),
    ):
        numbers.update({f"{prefix}_{label}": count for label, count in rows})
    return numbers
