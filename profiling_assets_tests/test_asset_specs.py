"""What drives staleness, pinned: every asset's code version (which model identities and spec
parts it holds), group, partitions, pool, queue tag, upstream assets and checks, and every
job, schedule and sensor, against `snapshots/asset_specs.json`. A change to any of them is a
change to what a model upgrade or spec edit re-builds, so it shows up as a diff in review.

After an intended change: `UPDATE_SNAPSHOTS=1 pytest profiling_assets_tests/test_asset_specs.py`
and commit the snapshot with the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from profiling_assets.config import Settings
from profiling_assets.models.registry import embedder_identity, llm_identity, reranker_identity
from profiling_assets.pipeline import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.json"


def asset_specs(settings: Settings) -> dict[str, Any]:
    """The specs as plain data. Model identities are named, not spelled out, so a new release
    of an offline model package does not read as a change of this code."""
    names = {
        str(llm_identity(settings)): "{llm}",
        str(reranker_identity(settings)): "{reranker}",
        str(embedder_identity(settings)): "{embedder}",
    }

    def named(version: str | None) -> str | None:
        for identity, name in names.items():
            version = version.replace(identity, name) if version else version
        return version

    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for definition in graph.assets_defs:
        checks = sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in definition.check_specs)
        for key in definition.keys:
            spec = definition.specs_by_key[key]
            assets[key.to_user_string()] = {
                "code_version": named(definition.code_versions_by_key.get(key)),
                "group": spec.group_name,
                "partitions": definition.partitions_def.name
                if definition.partitions_def is not None
                and hasattr(definition.partitions_def, "name")
                else None,
                "op": definition.op.name,
                "pool": definition.op.pool,
                "op_tags": dict(sorted(definition.op.tags.items())),
                "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
                "checks": checks,
            }
    jobs = {
        job.name: sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        for job in defs.resolve_all_job_defs()
        if not job.name.startswith("__")
    }
    return {
        "assets": dict(sorted(assets.items())),
        "asset_checks": sorted(
            f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys
        ),
        "jobs": dict(sorted(jobs.items())),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
    }


def test_the_asset_specs_are_the_reviewed_ones(tmp_path: Path) -> None:
    current = asset_specs(Settings(data_dir=tmp_path))
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, ensure_ascii=False, indent=2) + "\n", "utf-8")
    reviewed = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert current == reviewed, (
        "asset specs changed (code versions, pools, partitions, checks…): if intended, run "
        "UPDATE_SNAPSHOTS=1 pytest profiling_assets_tests/test_asset_specs.py and commit the "
        "snapshot with the change"
    )


def test_a_setting_that_drives_staleness_shows_in_the_snapshot(tmp_path: Path) -> None:
    """The snapshot data is fine enough to notice a change: another chunk size gives
    `document_chunks` another version; the LLM's identity sits in `user_profiles`' version."""
    default = asset_specs(Settings(data_dir=tmp_path))
    other = asset_specs(Settings(data_dir=tmp_path, chunk_size=600))
    changed = [k for k, v in default["assets"].items() if other["assets"][k] != v]
    assert changed == ["document_chunks"]
    assert "{llm}" in default["assets"]["user_profiles"]["code_version"]
    assert "{embedder}" in default["assets"]["chunk_embeddings"]["code_version"]
