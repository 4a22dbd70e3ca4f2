"""The one choice of warehouse from the settings, for every reader and writer: the DuckDB file
under the data folder (default), or the Parquet warehouse under the storage URI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from profiling_assets.config import Settings
from profiling_assets.stores.parquet_warehouse import ParquetWarehouse
from profiling_assets.stores.warehouse import restore_views


@contextmanager
def open_parquet_warehouse(root: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the Parquet warehouse at `root`: its tables and saved views as views;
    the store functions given it write files."""
    with ParquetWarehouse(root).connect() as con:
        restore_views(con)
        yield con


@contextmanager
def open_warehouse(
    settings: Settings, read_only: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The configured warehouse, for the CLI's readers (`export`, `eval`, `demo`, `diff`,
    `bench`). A DuckDB file must exist (`warehouse_exists`); a Parquet one without files
    reads as a warehouse with no tables."""
    root = settings.parquet_warehouse_dir
    if root is None:
        with duckdb.connect(str(settings.warehouse_path), read_only=read_only) as con:
            yield con
    else:
        with open_parquet_warehouse(root) as con:
            yield con


def warehouse_exists(settings: Settings) -> bool:
    root = settings.parquet_warehouse_dir
    if root is None:
        return settings.warehouse_path.exists()
    return bool(ParquetWarehouse(root).tables())


def warehouse_location(settings: Settings) -> tuple[str, Path]:
    """(what kind, where) for `doctor` and messages."""
    root = settings.parquet_warehouse_dir
    if root is None:
        return "DuckDB", settings.warehouse_path
    return "Parquet", root
