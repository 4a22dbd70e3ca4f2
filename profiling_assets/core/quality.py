"""Profile quality against planted truth: how good the profiles are, as plain numbers.

The truth vocabulary is the business spec's (project, concern and tag label names, anomaly
rule names, 低/中/高 levels): the sample generator plants exactly those names and the profile
uses them, so labels are matched exactly (after trimming whitespace). Truth labels the spec
cannot express are counted (`num_truth_labels_outside_spec`), never silently dropped.

Conventions:
- Users are scored when the truth names them *and* they have a profile; `profile_coverage`
  says what share of truth users got one (a failed profile lowers coverage, not the rates).
- Set metrics are micro-averaged over users (tags, concerns), user-level otherwise.
- A rate with an empty denominator (no anomalies planted, nothing cited) is `None`,
  not 0 or 1: "not measurable here" is different from "perfect" or "wrong".
- Profile list items that only say "nothing" (无, 暂无, 没有, 无异常 …) count as no item.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from profiling_assets.core.profiling.fact_rules import find_fact_contradictions
from profiling_assets.core.profiling.schema import UserProfile, field_values
from profiling_assets.core.records import UserFacts
from profiling_assets.core.text import display_width, pad_to_width, parse_list

TRUTH_LIST_COLUMNS = ("tags", "concerns", "anomalies", "signal_ids")
TRUTH_TEXT_COLUMNS = ("user_id", "intended_project", "spending_level", "purchase_intent")
NOTHING = frozenset({"", "无", "none", "n/a", "null"})
NOTHING_PREFIXES = ("无异常", "无明显", "暂无", "没有", "未发现")


# A share in [0, 1], or None where its denominator is empty ("not measurable here").
Rate = Annotated[float | None, Field(default=None)]
Count = Annotated[int, Field(default=0)]


class QualityScores(BaseModel):
    """Scores of one cohort's profiles (or of several, see `combine_scores`)."""

    model_config = ConfigDict(extra="forbid")

    num_users: Count
    num_truth_users: Count
    profile_coverage: Rate
    tag_precision: Rate
    tag_recall: Rate
    tag_f1: Rate
    project_accuracy: Rate
    project_top1_accuracy: Rate
    spending_accuracy: Rate
    intent_accuracy: Rate
    concern_recall: Rate
    anomaly_precision: Rate
    anomaly_recall: Rate
    citation_validity: Rate
    num_citations: Count
    num_contradictions: Count
    num_unchecked_profiles: Count
    evidence_recall: Rate
    signal_coverage: Rate
    num_signals: Count
    num_truth_labels_outside_spec: Count
    # Denominators of the micro-averaged rates, so cohorts combine exactly (`combine_scores`).
    num_predicted_tags: Count
    num_truth_tags: Count
    num_truth_concerns: Count
    num_predicted_anomalies: Count
    num_truth_anomalies: Count


COUNT_FIELDS: tuple[str, ...] = tuple(
    name for name, info in QualityScores.model_fields.items() if info.annotation is int
)
RATE_FIELDS: tuple[str, ...] = tuple(n for n in QualityScores.model_fields if n not in COUNT_FIELDS)
# The count each micro-averaged rate is a share of; rates not listed are shares of users.
RATE_DENOMINATORS: dict[str, tuple[str, ...]] = {
    "tag_precision": ("num_predicted_tags",),
    "tag_recall": ("num_truth_tags",),
    "tag_f1": ("num_predicted_tags", "num_truth_tags"),
    "concern_recall": ("num_truth_concerns",),
    "anomaly_precision": ("num_predicted_anomalies",),
    "anomaly_recall": ("num_truth_anomalies",),
    "citation_validity": ("num_citations",),
    "evidence_recall": ("num_signals",),
    "signal_coverage": ("num_signals",),
}

METRIC_LABELS: dict[str, str] = {
    "num_users": "评分用户数 / users scored",
    "num_truth_users": "真值用户数 / users in truth",
    "profile_coverage": "画像覆盖率 / profile coverage",
    "tag_precision": "标签精确率 / tag precision",
    "tag_recall": "标签召回率 / tag recall",
    "tag_f1": "标签 F1 / tag F1 (micro)",
    "project_accuracy": "意向项目命中率 / project in list",
    "project_top1_accuracy": "意向项目首位准确率 / project top-1",
    "spending_accuracy": "消费能力准确率 / spending level",
    "intent_accuracy": "购买意向准确率 / purchase intent",
    "concern_recall": "关注点召回率 / concern recall",
    "anomaly_precision": "异常检出精确率 / anomaly precision",
    "anomaly_recall": "异常检出召回率 / anomaly recall",
    "citation_validity": "引用有效率 / citation validity",
    "num_citations": "引用数 / citations",
    "num_contradictions": "与事实矛盾数 / fact contradictions",
    "num_unchecked_profiles": "未能核对的画像 / profiles not checkable",
    "evidence_recall": "证据召回率@n / evidence recall@n",
    "signal_coverage": "信号入块率 / signals in chunks",
    "num_signals": "真值信号数 / truth signals",
    "num_truth_labels_outside_spec": "规格无法表达的真值标签 / truth labels outside spec",
}


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def normalize_truth(truth: pl.DataFrame) -> pl.DataFrame:
    """Truth with text columns as strings and list columns as lists of strings, whatever
    the source stored (DuckDB lists, Parquet lists, CSV text)."""
    missing = [c for c in ("user_id",) if c not in truth.columns]
    if missing:
        raise ValueError(f"truth table lacks column {missing[0]!r}")
    columns: dict[str, pl.Series] = {}
    for name in TRUTH_TEXT_COLUMNS:
        values = truth[name].to_list() if name in truth.columns else [None] * truth.height
        cleaned = [None if v is None or not str(v).strip() else str(v).strip() for v in values]
        columns[name] = pl.Series(name, cleaned, pl.String)
    for name in TRUTH_LIST_COLUMNS:
        values = truth[name].to_list() if name in truth.columns else [None] * truth.height
        columns[name] = pl.Series(name, [parse_list(v) for v in values], pl.List(pl.String))
    return pl.DataFrame(columns).filter(pl.col("user_id").is_not_null())


def _items(profile: Mapping[str, Any], field: str) -> list[str]:
    """A field's items, trimmed, without the ones that only say "nothing"."""
    values = field_values(profile, field)
    return [v.strip() for v in values if isinstance(v, str) and not _says_nothing(v)]


def _says_nothing(item: str) -> bool:
    text = item.strip().lower()
    return text in NOTHING or text.startswith(NOTHING_PREFIXES)


def _level(profile: Mapping[str, Any], field: str) -> str | None:
    """A level field's value (低/中/高), trimmed; None when the profile states none."""
    values = field_values(profile, field)
    return values[0].strip() if values else None


def _citations(profile: Mapping[str, Any]) -> Iterable[str]:
    for field in profile.values():
        if isinstance(field, Mapping):
            yield from (str(c) for c in field.get("evidence") or [])


def _sets_by_user(frame: pl.DataFrame, value: str) -> dict[str, set[str]]:
    if frame.height == 0 or value not in frame.columns:
        return {}
    grouped = frame.group_by("user_id").agg(pl.col(value).unique())
    return {u: set(v) for u, v in grouped.iter_rows()}


def _chunks_by_source(chunks: pl.DataFrame) -> dict[tuple[str, str], set[str]]:
    """(user_id, source row id) → ids of that user's chunks that render the row."""
    found: dict[tuple[str, str], set[str]] = {}
    if chunks.height == 0:
        return found
    for user, chunk, sources in chunks.select("user_id", "chunk_id", "source_ids").iter_rows():
        for source in sources or []:
            found.setdefault((user, source), set()).add(chunk)
    return found


def score_profiles(
    truth: pl.DataFrame,
    profiles: Mapping[str, Mapping[str, Any]],
    evidence: pl.DataFrame,
    chunks: pl.DataFrame,
    facts: Mapping[str, UserFacts | Mapping[str, Any] | str] | None = None,
    vocabulary: Mapping[str, Iterable[str]] | None = None,
    cited_sets: Mapping[str, Iterable[str]] | None = None,
) -> QualityScores:
    """Score `profiles` (user id → `UserProfile` as a dict) against `truth` (the source's
    truth rows), `evidence` (user_id, chunk_id: the user's reranked top-n) and `chunks`
    (user_id, chunk_id, source_ids). `facts` (user id → `UserFacts`, its dict or its JSON)
    enables the contradiction count; users without facts are counted as unchecked.
    `vocabulary` (truth column → the spec's names) counts truth labels the spec cannot
    express; `cited_sets` (user → the evidence ids the profile was allowed to cite, rule
    evidence included) are added to the retrieved evidence as the set a citation must be in
    (and that evidence recall looks in)."""
    truth = normalize_truth(truth)
    facts = facts or {}
    scored = truth.filter(pl.col("user_id").is_in(list(profiles)))
    evidence_sets = _sets_by_user(evidence, "chunk_id")
    for user, ids in (cited_sets or {}).items():
        evidence_sets[user] = set(ids) | evidence_sets.get(user, set())
    chunks_of = _chunks_by_source(chunks)
    counts: Counter[str] = Counter()
    for row in scored.iter_rows(named=True):
        user = row["user_id"]
        profile, allowed = profiles[user], evidence_sets.get(user, set())
        counts += _label_counts(row, profile)
        counts += _evidence_counts(row, profile, allowed, chunks_of)
        counts += _fact_counts(profile, facts.get(user))
    outside = _labels_outside(truth, vocabulary) if vocabulary is not None else 0
    return _scores(counts, scored.height, truth.height, outside)


def _label_counts(row: Mapping[str, Any], profile: Mapping[str, Any]) -> Counter[str]:
    """One user's hits and totals for tags, project, spending, intent, concerns, anomalies."""
    tags, true_tags = set(_items(profile, "tags")), set(row["tags"])
    counts = Counter(tag_hits=len(tags & true_tags), tag_pred=len(tags), tag_true=len(true_tags))
    if project := row["intended_project"]:
        projects = _items(profile, "intended_projects")
        top1 = bool(projects) and projects[0] == project
        counts.update(project_total=1, project_hits=project in projects, project_top1=top1)
    if level := row["spending_level"]:
        counts.update(spending_total=1, spending_hits=_level(profile, "spending_level") == level)
    if intent := row["purchase_intent"]:
        counts.update(intent_total=1, intent_hits=_level(profile, "purchase_intent") == intent)
    true_concerns = set(row["concerns"])
    counts.update(
        concern_hits=len(true_concerns & set(_items(profile, "concerns"))),
        concern_true=len(true_concerns),
    )
    flagged, planted = bool(_items(profile, "anomalies")), bool(row["anomalies"])
    counts.update(anomaly_tp=flagged and planted, anomaly_pred=flagged, anomaly_true=planted)
    return counts


def _evidence_counts(
    row: Mapping[str, Any],
    profile: Mapping[str, Any],
    allowed: set[str],
    chunks_of: Mapping[tuple[str, str], set[str]],
) -> Counter[str]:
    """One user's citations (valid when in `allowed`) and planted signals (chunked, found)."""
    citations = list(_citations(profile))
    counts = Counter(cited=len(citations), cited_valid=sum(c in allowed for c in citations))
    for signal in row["signal_ids"]:
        holders = chunks_of.get((row["user_id"], signal), set())
        counts.update(
            signals=1, signals_chunked=bool(holders), signals_found=bool(holders & allowed)
        )
    return counts


def _fact_counts(
    profile: Mapping[str, Any], user_facts: UserFacts | Mapping[str, Any] | str | None
) -> Counter[str]:
    """One user's contradictions with the facts, or one unchecked profile."""
    try:
        if user_facts is None:
            raise ValueError("no facts")
        parsed_facts = (
            UserFacts.model_validate_json(user_facts)
            if isinstance(user_facts, str)
            else UserFacts.model_validate(user_facts)
        )
        found = find_fact_contradictions(UserProfile.model_validate(profile), parsed_facts)
    except (ValueError, ValidationError):
        # An old profile under a newer schema, or no facts: counted, not guessed.
        return Counter(unchecked=1)
    return Counter(contradictions=len(found))


def _scores(
    counts: Counter[str], num_users: int, num_truth_users: int, outside: int
) -> QualityScores:
    """The counts of `score_profiles` as rates (None where nothing was measurable)."""
    c = counts
    return QualityScores(
        num_users=num_users,
        num_truth_users=num_truth_users,
        profile_coverage=_ratio(num_users, num_truth_users),
        tag_precision=_ratio(c["tag_hits"], c["tag_pred"]),
        tag_recall=_ratio(c["tag_hits"], c["tag_true"]),
        tag_f1=_ratio(2 * c["tag_hits"], c["tag_pred"] + c["tag_true"]),
        project_accuracy=_ratio(c["project_hits"], c["project_total"]),
        project_top1_accuracy=_ratio(c["project_top1"], c["project_total"]),
        spending_accuracy=_ratio(c["spending_hits"], c["spending_total"]),
        intent_accuracy=_ratio(c["intent_hits"], c["intent_total"]),
        concern_recall=_ratio(c["concern_hits"], c["concern_true"]),
        anomaly_precision=_ratio(c["anomaly_tp"], c["anomaly_pred"]),
        anomaly_recall=_ratio(c["anomaly_tp"], c["anomaly_true"]),
        citation_validity=_ratio(c["cited_valid"], c["cited"]),
        num_citations=c["cited"],
        num_contradictions=c["contradictions"],
        num_unchecked_profiles=c["unchecked"],
        evidence_recall=_ratio(c["signals_found"], c["signals"]),
        signal_coverage=_ratio(c["signals_chunked"], c["signals"]),
        num_signals=c["signals"],
        num_truth_labels_outside_spec=outside,
        num_predicted_tags=c["tag_pred"],
        num_truth_tags=c["tag_true"],
        num_truth_concerns=c["concern_true"],
        num_predicted_anomalies=c["anomaly_pred"],
        num_truth_anomalies=c["anomaly_true"],
    )


def _labels_outside(truth: pl.DataFrame, vocabulary: Mapping[str, Iterable[str]]) -> int:
    """Truth labels (per user and column) that are not names of the spec's vocabulary."""
    missing = 0
    for column, names in vocabulary.items():
        known = set(names)
        for value in truth[column].to_list() if column in truth.columns else []:
            values = value if isinstance(value, list) else [value]
            missing += sum(1 for v in values if v and v not in known)
    return missing


def combine_scores(parts: Iterable[QualityScores]) -> QualityScores:
    """Several cohorts as one: counts add up; each rate is the mean of the cohorts that
    measured it, weighted by what it is a share of (anomaly recall by true anomalies, tag
    precision by predicted tags …, else scored users), which is the micro average of all."""
    parts = list(parts)
    combined: dict[str, Any] = {name: sum(getattr(p, name) for p in parts) for name in COUNT_FIELDS}
    for name in RATE_FIELDS:
        counts = RATE_DENOMINATORS.get(name, ("num_users",))
        weighted = [
            (getattr(p, name), sum(getattr(p, c) for c in counts))
            for p in parts
            if getattr(p, name) is not None
        ]
        if not sum(w for _, w in weighted):  # scores stored before the counts existed
            weighted = [
                (getattr(p, name), p.num_users) for p in parts if getattr(p, name) is not None
            ]
        weight = sum(w for _, w in weighted)
        combined[name] = sum(v * w for v, w in weighted) / weight if weight else None
    if combined["num_truth_users"]:
        combined["profile_coverage"] = combined["num_users"] / combined["num_truth_users"]
    return QualityScores(**combined)


def render_scores(columns: Mapping[str, QualityScores]) -> str:
    """A plain-text table: one row per metric, one column per cohort (and overall)."""
    names = list(columns)
    label_width = max(display_width(label) for label in METRIC_LABELS.values()) + 2
    header = pad_to_width("指标 / metric", label_width) + "".join(f"{n:>12}" for n in names)
    lines = [header, "-" * display_width(header)]
    for field, label in METRIC_LABELS.items():
        cells = []
        for scores in columns.values():
            value = getattr(scores, field)
            cells.append(
                "—" if value is None else f"{value}" if isinstance(value, int) else f"{value:.3f}"
            )
        lines.append(pad_to_width(label, label_width) + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def summary_markdown(scores: QualityScores) -> str:
    """A few Chinese lines for the Dagster UI (no table)."""

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.0%}"

    return "\n".join(
        [
            f"- 评分用户 {scores.num_users} / 真值用户 {scores.num_truth_users}",
            f"- 标签 F1 {pct(scores.tag_f1)}；关注点召回 {pct(scores.concern_recall)}",
            f"- 意向项目命中 {pct(scores.project_accuracy)}"
            f"（首位 {pct(scores.project_top1_accuracy)}）",
            f"- 消费能力 {pct(scores.spending_accuracy)}；购买意向 {pct(scores.intent_accuracy)}",
            f"- 异常精确率 {pct(scores.anomaly_precision)}，召回率 {pct(scores.anomaly_recall)}",
            f"- 引用有效 {pct(scores.citation_validity)}（{scores.num_citations} 条）；"
            f"与事实矛盾 {scores.num_contradictions} 处",
            f"- 证据召回@n {pct(scores.evidence_recall)}；信号入块 {pct(scores.signal_coverage)}",
        ]
    )
