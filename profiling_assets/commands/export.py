"""`profiling-assets export`: the latest profile per user, as files for the teams downstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import polars as pl

from profiling_assets.config import Settings
from profiling_assets.stores.names import safe_cohort
from profiling_assets.stores.tables import TABLES
from profiling_assets.stores.warehouse import table_exists
from profiling_assets.stores.warehouse_access import (
    open_warehouse,
    warehouse_exists,
    warehouse_location,
)

ExportFormat = Literal["parquet", "csv", "jsonl"]
FORMATS: tuple[ExportFormat, ...] = ("parquet", "csv", "jsonl")
COLUMNS = ("cohort", "user_id", "llm_identity", "prompt_version", "created_at")


class ExportError(RuntimeError):
    """Nothing to export (no warehouse, no view yet); the message is one sentence."""


def _readable(text: str | None) -> str | None:
    # Stored JSON may carry \uXXXX escapes; the people reading the file read Chinese.
    return None if text is None else json.dumps(json.loads(text), ensure_ascii=False)


def read_latest(settings: Settings, cohort: str | None = None) -> pl.DataFrame:
    """The `latest_profiles` view (optionally one cohort) with readable JSON columns."""
    if not warehouse_exists(settings):
        where = warehouse_location(settings)[1]
        raise ExportError(f"找不到数据仓库 {where} / no warehouse: run profiling-assets demo")
    with open_warehouse(settings) as con:
        view = TABLES.latest_profiles
        if not table_exists(con, view):
            raise ExportError(
                f"仓库里还没有 {view.name} 视图，先物化它（profiling-assets demo）"
                f" / no {view.name} view yet: materialize it first"
            )
        select = ", ".join(f'"{c}"' for c in (*COLUMNS, "profile_json", "facts_json"))
        query = f'SELECT {select} FROM "{view.name}"'
        params: list[str] = []
        if cohort is not None:
            query += " WHERE cohort = ?"
            params.append(safe_cohort(cohort))
        frame = con.sql(query + " ORDER BY cohort, user_id", params=params).pl()
    return frame.with_columns(
        pl.col("profile_json").map_elements(_readable, return_dtype=pl.String).alias("profile"),
        pl.col("facts_json").map_elements(_readable, return_dtype=pl.String).alias("facts"),
    ).drop("profile_json", "facts_json")


def export_profiles(
    settings: Settings, fmt: ExportFormat, out: Path, cohort: str | None = None
) -> int:
    """Write the latest profiles to `out` in UTF-8; returns the number of users written."""
    frame = read_latest(settings, cohort)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(out)
    elif fmt == "csv":
        # With a BOM: Excel on Chinese Windows reads a CSV without one as GBK (mojibake).
        frame.write_csv(out, include_bom=True)
    else:
        with out.open("w", encoding="utf-8") as handle:
            for row in frame.iter_rows(named=True):
                row["created_at"] = row["created_at"].isoformat() if row["created_at"] else None
                row["profile"] = json.loads(row["profile"]) if row["profile"] else None
                row["facts"] = json.loads(row["facts"]) if row["facts"] else None
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return frame.height
