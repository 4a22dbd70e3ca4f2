"""A source read and validated the way the `source_tables` asset does it, without Dagster
(and without importing it, so the property tests that call it start fast)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from profiling_assets.core.contract import SOURCE_TABLES
from profiling_assets.core.intake import validate_cohort
from profiling_assets.core.validate import ValidationResult
from profiling_assets.stores.source import (
    UNASSIGNED_COHORT,
    ColumnMapping,
    list_cohorts,
    malformed_lines,
    open_source,
    read_cohort_table,
)

TODAY = date(2024, 6, 30)  # the validators' today: after every planted date but the future ones


def intake(
    source: Path, columns: ColumnMapping | None = None, encoding: str = "auto"
) -> dict[str, dict[str, ValidationResult]]:
    """The validator's result for every cohort and table of `source`."""
    out = {}
    tables = tuple(SOURCE_TABLES)
    with open_source(source, columns, encoding) as con:
        for cohort in list_cohorts(con):
            raw = {t: read_cohort_table(con, t, cohort, with_provenance=True) for t in tables}
            unassigned = cohort == UNASSIGNED_COHORT
            malformed = {t: malformed_lines(con, t) for t in tables} if unassigned else None
            out[cohort] = validate_cohort(raw, cohort, TODAY, unassigned, malformed)
    return out
