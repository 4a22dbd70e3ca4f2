"""Operator commands: the `profiling-assets` CLI and what it runs (demo, eval, bench, doctor,
backfill, export, check-source) plus the local services and cluster the scale-out tests use.
Nothing here is loaded by the Dagster code location."""
