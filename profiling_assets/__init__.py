"""Evidence-backed Chinese user profiles from raw records, as Dagster assets."""
