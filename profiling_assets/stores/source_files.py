"""Find the source tables in a folder (or one workbook) and read CSV and Excel into frames.

A table is a file named after it (`sales.csv`, `sales.parquet`, `sales.xlsx`, or an alias such
as `订单.csv`), or a sheet of that name in a workbook of the folder (`导出.xlsx` with sheets
`users`, `sales` …). CSV goes through the line-by-line reader (`core.csv_lines`); Excel through
polars' `read_excel` with the calamine engine, every cell as text, so a date cell, a number
typed as text and an Excel serial number all reach the validator the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fastexcel
import polars as pl

from profiling_assets.core.contract import (
    ALL_SOURCE_TABLES,
    LINE_COLUMN,
    SHA_COLUMN,
    SourceContractError,
    table_names,
)
from profiling_assets.core.csv_lines import CsvRead, header_names, read_csv_bytes

EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls")
# When one stem has several formats (`sales.parquet` and `sales.csv`), the first one wins.
_SUFFIX_ORDER = (".parquet", ".csv", *EXCEL_SUFFIXES)
FileKind = Literal["parquet", "csv", "excel"]


@dataclass(frozen=True)
class TableFile:
    table: str
    kind: FileKind
    path: Path
    sheet: str | None = None

    @property
    def label(self) -> str:
        """How rejected rows and messages name it: `sales.csv`, `导出.xlsx#订单`."""
        return f"{self.path.name}#{self.sheet}" if self.sheet else self.path.name


def _key(name: str) -> str:
    return name.strip().casefold()


def _visible_files(folder: Path) -> list[Path]:
    # Excel's lock files (`~$book.xlsx`) and hidden files are not exports.
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(("~$", ".")) and p.suffix.lower() in _SUFFIX_ORDER
    )


def sheet_names(path: Path) -> list[str]:
    try:
        return list(fastexcel.read_excel(str(path)).sheet_names)
    except Exception as error:  # fastexcel raises its own types for every kind of bad file
        raise SourceContractError(f"{path.name} cannot be read as a workbook: {error}") from error


def locate_tables(path: Path) -> dict[str, TableFile]:
    """Where each table of the contract is, in a folder or a workbook; absent ones are left out
    (the contract check names them). Two places for one table is an error naming both."""
    files = [path] if path.is_file() else _visible_files(path)
    named = {_key(n): table for table in ALL_SOURCE_TABLES for n in table_names(table)}
    found: dict[str, list[TableFile]] = {}
    workbooks: list[Path] = []
    for file in files:
        table = named.get(_key(file.stem)) if path.is_dir() else None
        suffix = file.suffix.lower()
        if table is None:
            if suffix in EXCEL_SUFFIXES:
                workbooks.append(file)
            continue
        if suffix in EXCEL_SUFFIXES:
            sheets = sheet_names(file)
            own = [s for s in sheets if named.get(_key(s)) == table]
            entry = TableFile(table, "excel", file, own[0] if own else sheets[0])
        else:
            entry = TableFile(table, "csv" if suffix == ".csv" else "parquet", file)
        found.setdefault(table, []).append(entry)
    for book in workbooks:
        for sheet in sheet_names(book):
            table = named.get(_key(sheet))
            if table is not None:
                found.setdefault(table, []).append(TableFile(table, "excel", book, sheet))
    chosen: dict[str, TableFile] = {}
    for table, entries in found.items():
        # One place is one file stem (its formats compete by _SUFFIX_ORDER) or one sheet.
        places = {e.label if e.path in workbooks else _key(e.path.stem) for e in entries}
        if len(places) > 1:
            listed = ", ".join(sorted(e.label for e in entries))
            raise SourceContractError(
                f"table {table!r} is in more than one place ({listed}): keep one of them"
            )
        chosen[table] = min(entries, key=lambda e: _SUFFIX_ORDER.index(e.path.suffix.lower()))
    return chosen


def read_csv_file(entry: TableFile, encoding: str) -> CsvRead:
    return read_csv_bytes(entry.path.read_bytes(), entry.path.name, encoding)


def read_excel_sheet(entry: TableFile) -> tuple[pl.DataFrame, int]:
    """(every cell as text with its row number and fingerprint, number of empty rows).

    Row numbers count the table's header row as 1 (Excel's own numbers when the table starts
    in A1). A row's fingerprint is the SHA-256 of its cells as a JSON list of texts.
    """
    try:
        frame = pl.read_excel(
            entry.path,
            sheet_name=entry.sheet,
            engine="calamine",
            infer_schema_length=0,  # every column text: types are the validator's job
            drop_empty_rows=False,
            raise_if_empty=False,
        )
    except Exception as error:  # calamine/fastexcel errors have no common base class
        raise SourceContractError(f"{entry.label} cannot be read: {error}") from error
    if not frame.columns:
        raise SourceContractError(f"{entry.label} has no header row")
    frame = frame.rename(dict(zip(frame.columns, header_names(frame.columns), strict=True)))
    frame = frame.with_columns(
        pl.col(c).cast(pl.String).replace("", None) for c in frame.columns
    ).with_row_index(LINE_COLUMN, offset=2)
    cells = [c for c in frame.columns if c != LINE_COLUMN]
    blank = [pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in cells]
    empty = frame.select(pl.all_horizontal(blank).alias("empty"))["empty"]
    kept = frame.filter(~empty)
    fingerprints = [
        hashlib.sha256(json.dumps(list(row), ensure_ascii=False).encode("utf-8")).hexdigest()
        for row in kept.select(cells).iter_rows()
    ]
    kept = kept.with_columns(
        pl.col(LINE_COLUMN).cast(pl.Int64), pl.Series(SHA_COLUMN, fingerprints, pl.String)
    )
    return kept.select(*cells, LINE_COLUMN, SHA_COLUMN), int(empty.sum())
