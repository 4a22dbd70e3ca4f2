"""Validate one cohort's raw source tables together (users first: events need their user ids)."""

from __future__ import annotations

from datetime import date

import polars as pl

from profiling_assets.core.contract import EVENT_TABLES, SOURCE_TABLES
from profiling_assets.core.validate import (
    REJECTED_SCHEMA,
    ValidationResult,
    raw_rows_json,
    validate_table,
)

UNASSIGNED_REASON = "无法确定所属批次：注册日期无效、用户 id 缺失或批次名不合法"


def validate_cohort(
    raw: dict[str, pl.DataFrame], cohort: str, today: date, unassigned: bool = False
) -> dict[str, ValidationResult]:
    """Accepted and rejected rows per table; `unassigned` rejects every row."""
    results: dict[str, ValidationResult] = {}
    users = validate_table("users", raw["users"], cohort, today)
    if unassigned:
        users = _reject_all(users, raw["users"], cohort, "users")
    results["users"] = users
    known = set(users.accepted["user_id"].to_list())
    for table in EVENT_TABLES:
        results[table] = validate_table(table, raw[table], cohort, today, known_user_ids=known)
    return results


def _reject_all(
    result: ValidationResult, raw: pl.DataFrame, cohort: str, table: str
) -> ValidationResult:
    """Rows valid on their own but without a cohort still go to rejected_rows, with the reason."""
    if result.accepted.height == 0:
        return result
    key = SOURCE_TABLES[table].key
    accepted_keys = result.accepted[key]
    orphaned = raw.filter(pl.col(key).cast(pl.String).is_in(accepted_keys.implode()))
    extra = pl.DataFrame(
        {
            "cohort": [cohort] * orphaned.height,
            "table_name": [table] * orphaned.height,
            "row_key": orphaned[key].cast(pl.String),
            "raw_row": raw_rows_json(orphaned),
            "reason": [UNASSIGNED_REASON] * orphaned.height,
        },
        schema=REJECTED_SCHEMA,
    )
    return ValidationResult(
        accepted=result.accepted.clear(),
        rejected=pl.concat([result.rejected, extra]),
        num_read=result.num_read,
        num_nulled=result.num_nulled,
        num_truncated=result.num_truncated,
    )


def all_rejected(results: dict[str, ValidationResult]) -> pl.DataFrame:
    frames = [r.rejected for r in results.values()]
    return pl.concat(frames) if frames else pl.DataFrame(schema=REJECTED_SCHEMA)
