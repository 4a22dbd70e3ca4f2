"""Sample-data generator with planted truth: `generate_tables` then `write_source`."""

from profiling_assets.synth.generate import generate_tables, write_source

__all__ = ["generate_tables", "write_source"]
