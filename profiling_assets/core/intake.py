"""Validate one cohort's raw source tables together (users first: events need their user ids)."""

from __future__ import annotations

from datetime import date

import polars as pl

from profiling_assets.core.contract import EVENT_TABLES
from profiling_assets.core.validate import REJECTED_SCHEMA, ValidationResult, validate_table

UNASSIGNED_REASON = "无法确定所属批次：注册日期无效、用户 id 缺失或批次名不合法"


def validate_cohort(
    raw: dict[str, pl.DataFrame], cohort: str, today: date, unassigned: bool = False
) -> dict[str, ValidationResult]:
    """Accepted and rejected rows per table; `unassigned` rejects every row."""
    results: dict[str, ValidationResult] = {}
    # Rows valid on their own but without a cohort still go to rejected_rows, with the reason;
    # rejecting inside the validator keeps each raw row exactly once.
    reason = UNASSIGNED_REASON if unassigned else None
    users = validate_table("users", raw["users"], cohort, today, reject_reason=reason)
    results["users"] = users
    known = set(users.accepted["user_id"].to_list())
    for table in EVENT_TABLES:
        results[table] = validate_table(table, raw[table], cohort, today, known_user_ids=known)
    return results


def all_rejected(results: dict[str, ValidationResult]) -> pl.DataFrame:
    frames = [r.rejected for r in results.values()]
    return pl.concat(frames) if frames else pl.DataFrame(schema=REJECTED_SCHEMA)
