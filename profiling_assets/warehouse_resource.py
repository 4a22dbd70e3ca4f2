"""The `duckdb` resource every asset writes through, chosen from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from profiling_assets.config import Settings
from profiling_assets.stores.warehouse_access import open_parquet_warehouse


class ParquetWarehouseResource(DuckDBResource):
    """A `DuckDBResource` whose connections are in-memory DuckDBs over the Parquet warehouse
    in `root` (every stored table a view; the store functions write files), so the assets,
    typed against `DuckDBResource`, run unchanged on workers that share only that folder."""

    database: str = Field(":memory:", description="Unused: every connection is in memory.")
    root: str = Field(description="Folder of the Parquet warehouse (under the storage URI).")

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with open_parquet_warehouse(Path(self.root)) as con:
            yield con


def warehouse_resource(settings: Settings) -> DuckDBResource:
    """The DuckDB file under the data folder, as before, unless a storage URI is set."""
    root = settings.parquet_warehouse_dir
    if root is None:
        return DuckDBResource(database=str(settings.warehouse_path))
    return ParquetWarehouseResource(root=str(root))
