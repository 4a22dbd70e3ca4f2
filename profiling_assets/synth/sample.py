"""Sample source tables for a business spec: the clinic's rich phrasebooks for the shipped
clinic spec, the spec-driven generator for any other."""

from __future__ import annotations

import polars as pl

from profiling_assets.core.spec import load_spec, resolve_spec_path
from profiling_assets.synth.phrases import Style


def sample_tables(
    spec: str | None, users: int, seed: int, months: int = 6, style: Style = "standard"
) -> dict[str, pl.DataFrame]:
    """The four source tables plus `truth` in the vocabulary of `spec` (name or path)."""
    if resolve_spec_path(spec) == resolve_spec_path("clinic"):
        from profiling_assets.synth.generate import generate_tables

        return generate_tables(users=users, seed=seed, months=months, style=style)
    from profiling_assets.synth.from_spec import generate_tables_for_spec

    return generate_tables_for_spec(
        load_spec(spec), users=users, seed=seed, months=months, style=style
    )
