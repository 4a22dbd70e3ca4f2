"""What a DuckDB connection holds under a name: the one lookup in its catalog."""

from __future__ import annotations

import duckdb


def catalog_type(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """'BASE TABLE' or 'VIEW' for a table or view `name` of the connection's own database;
    None when there is none."""
    found = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_name = ?",
        [name],
    ).fetchall()
    return str(found[0][0]) if found else None
