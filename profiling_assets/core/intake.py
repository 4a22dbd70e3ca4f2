"""Validate one cohort's raw source tables together (users first: events need their user ids)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import date

import polars as pl

from profiling_assets.core.contract import EVENT_TABLES, MAX_PLAUSIBLE_AMOUNT
from profiling_assets.core.pii import mask_pii
from profiling_assets.core.validate import REJECTED_SCHEMA, ValidationResult, validate_table

UNASSIGNED_REASON = "无法确定所属批次：注册日期无效、用户 id 缺失或批次名不合法"
MALFORMED_REASON = "CSV 第 {line} 行格式错误，无法读成一行记录：{reason}"


def malformed_rejections(table: str, cohort: str, malformed: pl.DataFrame) -> pl.DataFrame:
    """Rejected rows for source lines that could not be read as rows (line, csv_line, reason,
    and where known source and source_sha256); the line's text is kept masked."""
    given = malformed.columns
    sources = malformed["source"] if "source" in given else [table] * malformed.height
    shas = malformed["source_sha256"] if "source_sha256" in given else [None] * malformed.height
    rows = [
        {
            "cohort": cohort,
            "table_name": table,
            "row_key": None,
            "raw_row": json.dumps({"line": line, "csv_line": mask_pii(text)}, ensure_ascii=False),
            "reason": MALFORMED_REASON.format(line=line, reason=reason),
            "source": source or table,
            "source_line": line,
            "source_sha256": sha,
        }
        for (line, text, reason), source, sha in zip(
            malformed.select("line", "csv_line", "reason").iter_rows(), sources, shas, strict=True
        )
    ]
    return pl.DataFrame(rows, schema=REJECTED_SCHEMA)


def validate_cohort(
    raw: Mapping[str, pl.DataFrame],
    cohort: str,
    today: date,
    unassigned: bool = False,
    malformed: dict[str, pl.DataFrame] | None = None,
    max_amount: float = MAX_PLAUSIBLE_AMOUNT,
) -> dict[str, ValidationResult]:
    """Accepted and rejected rows per table; `unassigned` rejects every row. `malformed`
    (lines the reader could not split into fields) count as read and rejected. Each table of
    `raw` is taken once, so a mapping that reads on access holds one raw table at a time."""
    results: dict[str, ValidationResult] = {}
    # Rows valid on their own but without a cohort still go to rejected_rows, with the reason;
    # rejecting inside the validator keeps each raw row exactly once.
    reason = UNASSIGNED_REASON if unassigned else None
    users = validate_table("users", raw["users"], cohort, today, reject_reason=reason)
    results["users"] = users
    known = set(users.accepted["user_id"].to_list())
    for table in EVENT_TABLES:
        results[table] = validate_table(
            table, raw[table], cohort, today, known_user_ids=known, max_amount=max_amount
        )
    for table, lines in (malformed or {}).items():
        if lines.height:
            result = results[table]
            results[table] = dataclasses.replace(
                result,
                rejected=pl.concat([result.rejected, malformed_rejections(table, cohort, lines)]),
                num_read=result.num_read + lines.height,
            )
    return results


def all_rejected(results: dict[str, ValidationResult]) -> pl.DataFrame:
    frames = [r.rejected for r in results.values()]
    return pl.concat(frames) if frames else pl.DataFrame(schema=REJECTED_SCHEMA)
