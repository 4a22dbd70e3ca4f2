"""Thin Dagster wrappers: partition key → resources → core function → idempotent write."""
