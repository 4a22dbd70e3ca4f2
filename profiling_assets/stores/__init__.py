"""Storage: the source reader, the DuckDB warehouse and the LanceDB vector store."""
