"""The one Definitions object of the code location."""

from __future__ import annotations

from profiling_assets.config import Settings
from profiling_assets.pipeline import build_definitions

defs = build_definitions(Settings())
