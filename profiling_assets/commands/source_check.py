"""`profiling-assets check-source`: read a source the way a run does, write nothing, and say
per table how many rows were read, accepted and rejected (by reason), which cohorts it holds,
and the first rejected lines (masked), so a company's export can be checked before a run."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from profiling_assets.core.contract import MAX_PLAUSIBLE_AMOUNT, SOURCE_TABLES
from profiling_assets.core.csv_lines import AUTO_ENCODING
from profiling_assets.core.intake import validate_cohort
from profiling_assets.core.spec import Identity
from profiling_assets.stores.identity import Stitching, stitch_source
from profiling_assets.stores.source import (
    UNASSIGNED_COHORT,
    ColumnMapping,
    list_cohorts,
    malformed_lines,
    open_source,
    read_cohort_table,
    source_of,
)
from profiling_assets.stores.tables import TABLES as STORED

TABLES = tuple(SOURCE_TABLES)
_LINE_NUMBER = re.compile(r"第 \d+ 行")


class TableReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    source: str
    detail: str  # the CSV's encoding, or excel / parquet / duckdb
    num_read: int
    num_accepted: int
    num_rejected: int
    num_blank: int
    reasons: dict[str, int]  # reason (line numbers folded) → rows


class RejectedSample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    source: str
    line: int | None
    reason: str
    text: str  # masked, as rejected_rows stores it


class StitchingReport(BaseModel):
    """What stitching the source afresh (in memory) finds: people, and what the guards did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_id_rows: int  # rows read for their ids (every table with ids, and `identities`)
    num_ids: int
    num_persons: int
    excluded_by_type: dict[str, int]  # shared ids set aside, by id type
    oversize: list[str]  # components left unmerged: "size 个 id（types）"


class SourceReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    cohorts: list[str]
    tables: list[TableReport]
    first_rejected: list[RejectedSample]
    stitching: StitchingReport | None = None


def fresh_stitching(
    path: Path, columns: ColumnMapping | None, encoding: str, rules: Identity, key: bytes
) -> tuple[Stitching, StitchingReport]:
    """Stitch the whole source in memory, as if for the first time (nothing is stored)."""
    empty = (STORED.identity_nodes.empty(), STORED.persons.empty())
    with open_source(path, columns, encoding) as con:
        result, stitched, rows = stitch_source(con, rules, key, *empty, datetime.now())
    excluded = stitched.excluded.group_by("id_type").len().sort("id_type")
    report = StitchingReport(
        num_id_rows=rows,
        num_ids=result.nodes.height,
        num_persons=result.persons.height,
        excluded_by_type=dict(excluded.iter_rows()),
        oversize=[f"{size} 个 id（{types}）" for _, size, types in stitched.oversize.iter_rows()],
    )
    return Stitching(rules, key, result.nodes), report


def inspect_source(
    path: Path,
    columns: ColumnMapping | None = None,
    encoding: str = AUTO_ENCODING,
    today: date | None = None,
    sample: int = 5,
    identity: tuple[Identity, bytes] | None = None,
    max_amount: float = MAX_PLAUSIBLE_AMOUNT,
) -> SourceReport:
    """Every cohort through the real reader and validator; `SourceContractError` when the
    source cannot be read at all. `identity` (the spec's rules and the key): rows are keyed on
    people stitched afresh in memory first, as `person_ids` would."""
    today = today or date.today()
    stitching, stitch_report = (
        fresh_stitching(path, columns, encoding, *identity) if identity else (None, None)
    )
    reads: dict[str, int] = Counter()
    accepted: dict[str, int] = Counter()
    reasons: dict[str, Counter[str]] = {t: Counter() for t in TABLES}
    rejected_rows = []
    with open_source(path, columns, encoding, stitching) as con:
        cohorts = list_cohorts(con)
        for cohort in cohorts:
            unassigned = cohort == UNASSIGNED_COHORT
            raw = {t: read_cohort_table(con, t, cohort, with_provenance=True) for t in TABLES}
            malformed = {t: malformed_lines(con, t) for t in TABLES} if unassigned else None
            results = validate_cohort(raw, cohort, today, unassigned, malformed, max_amount)
            for table, result in results.items():
                reads[table] += result.num_read
                accepted[table] += result.accepted.height
                reasons[table].update(
                    _LINE_NUMBER.sub("第 N 行", r) for r in result.rejected["reason"]
                )
                rejected_rows += result.rejected.to_dicts()
        sources = {t: source_of(con, t) for t in TABLES}
    tables = [
        TableReport(
            table=t,
            source=sources[t].source,
            detail=sources[t].detail,
            num_read=reads[t],
            num_accepted=accepted[t],
            num_rejected=sum(reasons[t].values()),
            num_blank=sources[t].blank,
            reasons=dict(reasons[t].most_common()),
        )
        for t in TABLES
    ]
    # In file order where there are lines, so the first rejected lines are the first in the file.
    rejected_rows.sort(key=lambda r: (TABLES.index(r["table_name"]), r["source_line"] or 0))
    first = [
        RejectedSample(
            table=r["table_name"],
            source=r["source"],
            line=r["source_line"],
            reason=r["reason"],
            text=_row_text(r["raw_row"]),
        )
        for r in rejected_rows[:sample]
    ]
    return SourceReport(
        path=str(path),
        cohorts=cohorts,
        tables=tables,
        first_rejected=first,
        stitching=stitch_report,
    )


def _row_text(raw_row: str) -> str:
    """A rejected row as one short line: the CSV line itself, or the row's values."""
    row = json.loads(raw_row)
    if set(row) == {"line", "csv_line"}:
        text = str(row["csv_line"])
    else:
        text = ",".join("" if v is None else str(v) for v in row.values())
    # Shown on a terminal: control and format characters (escape sequences, bidi overrides)
    # from the data must not act on it.
    text = "".join(ch if ch.isprintable() else ("⏎" if ch == "\n" else "·") for ch in text)
    return text if len(text) <= 120 else text[:119] + "…"


def render_source_report(report: SourceReport) -> str:
    lines = [
        f"数据源 / source: {report.path}",
        f"批次 / cohorts ({len(report.cohorts)}): {', '.join(report.cohorts) or '无'}",
        "",
    ]
    if report.stitching:
        st = report.stitching
        shared = "、".join(f"{t} {n} 个" for t, n in st.excluded_by_type.items()) or "无"
        lines += [
            f"身份拼接 / identity stitching：{st.num_id_rows} 行里 {st.num_ids} 个 id → "
            f"{st.num_persons} 人；被排除的共享 id：{shared}",
            *(f"  - 未合并的过大连通块：{o}" for o in st.oversize),
            "",
        ]
    for t in report.tables:
        detail = f"，{t.detail}" if t.detail else ""
        blank = f"，空行 {t.num_blank}" if t.num_blank else ""
        lines.append(
            f"{t.table}（{t.source}{detail}）：读取 {t.num_read} 行，接受 {t.num_accepted}，"
            f"拒绝 {t.num_rejected}{blank} / read {t.num_read}, accepted {t.num_accepted}, "
            f"rejected {t.num_rejected}"
        )
        lines += [f"  - {reason}：{n} 行" for reason, n in t.reasons.items()]
    if report.first_rejected:
        lines += ["", "前几条被拒绝的记录（已脱敏）/ first rejected rows (masked):"]
        for r in report.first_rejected:
            where = f"{r.source} 第 {r.line} 行" if r.line else r.source
            lines.append(f"  {where}：{r.reason}")
            lines.append(f"    {r.text}")
    return "\n".join(lines)
