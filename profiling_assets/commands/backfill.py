"""The backfill that rebuilds what a model upgrade changed.

Staleness and backfills go through Dagster's public GraphQL API (the one the UI uses), so
`backfill --stale` sees exactly what the UI shows and depends on no private module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from profiling_assets.commands.webserver import DagsterGraphQL, GraphQLError

BACKFILL_TAGS = {"profiling/reason": "model-upgrade"}


_ASSET_GRAPH = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    isMaterializable
    isPartitioned
    partitionKeys
    dependencyKeys { path }
    dependedByKeys { path }
  }
}
"""

_PARTITION_STATE = """
query PartitionState($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleCausesByPartition(partitions: $partitions) { key { path } category }
    latestMaterializationByPartition(partitions: $partitions) { timestamp }
  }
}
"""

# Assets outside the cohort partitions (e.g. the person-id stitching before them).
_UNPARTITIONED_STATE = """
query UnpartitionedState($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleCauses { key { path } category }
    assetMaterializations(limit: 1) { timestamp }
  }
}
"""
WHOLE = ""  # the partition key an unpartitioned asset's state is kept under

_LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


@dataclass(frozen=True)
class AssetState:
    """One materializable asset as the webserver sees it, per cohort partition."""

    key: str
    parents: frozenset[str]
    children: frozenset[str]
    partitioned: bool = True
    code_changed: frozenset[str] = frozenset()  # cohorts built under another code version
    materialized_ms: dict[str, float] = field(default_factory=dict)  # cohort → latest

    def built_ms(self, cohort: str) -> float:
        return self.materialized_ms.get(cohort if self.partitioned else WHOLE, 0.0)


def _path(key: dict) -> str:
    return "/".join(key["path"])


def fetch_asset_states(client: DagsterGraphQL) -> tuple[list[AssetState], list[str]]:
    """(every materializable asset with its per-cohort state, the cohort partitions)."""
    nodes = [n for n in client.execute(_ASSET_GRAPH)["assetNodes"] if n["isMaterializable"]]
    cohorts = sorted({p for n in nodes for p in n["partitionKeys"]})
    states = _partitioned_states([n for n in nodes if n["isPartitioned"]], cohorts, client)
    states += _unpartitioned_states([n for n in nodes if not n["isPartitioned"]], client)
    return states, cohorts


def _key_inputs(nodes: list[dict]) -> list[dict]:
    return [{"path": n["assetKey"]["path"]} for n in nodes]


def _partitioned_states(
    nodes: list[dict], cohorts: list[str], client: DagsterGraphQL
) -> list[AssetState]:
    if not nodes:
        return []
    graph = {_path(n["assetKey"]): n for n in nodes}
    variables = {"keys": _key_inputs(nodes), "partitions": cohorts}
    states = []
    for node in client.execute(_PARTITION_STATE, variables)["assetNodes"]:
        key = _path(node["assetKey"])
        latest = zip(cohorts, node["latestMaterializationByPartition"], strict=True)
        states.append(
            AssetState(
                key=key,
                parents=frozenset(map(_path, graph[key]["dependencyKeys"])),
                children=frozenset(map(_path, graph[key]["dependedByKeys"])),
                code_changed=_code_changed_cohorts(key, cohorts, node["staleCausesByPartition"]),
                materialized_ms={c: float(m["timestamp"]) for c, m in latest if m is not None},
            )
        )
    return states


def _unpartitioned_states(nodes: list[dict], client: DagsterGraphQL) -> list[AssetState]:
    if not nodes:
        return []
    graph = {_path(n["assetKey"]): n for n in nodes}
    states = []
    for node in client.execute(_UNPARTITIONED_STATE, {"keys": _key_inputs(nodes)})["assetNodes"]:
        key = _path(node["assetKey"])
        latest = node["assetMaterializations"]
        states.append(
            AssetState(
                key=key,
                parents=frozenset(map(_path, graph[key]["dependencyKeys"])),
                children=frozenset(map(_path, graph[key]["dependedByKeys"])),
                partitioned=False,
                code_changed=_code_changed_cohorts(key, [WHOLE], [node["staleCauses"]]),
                materialized_ms={WHOLE: float(latest[0]["timestamp"])} if latest else {},
            )
        )
    return states


def _code_changed_cohorts(key: str, cohorts: list[str], causes: list[list[dict]]) -> frozenset:
    """Cohorts whose own code version changed (not one inherited from upstream)."""
    return frozenset(
        cohort
        for cohort, found in zip(cohorts, causes or [[] for _ in cohorts], strict=True)
        if any(c["category"] == "CODE" and _path(c["key"]) == key for c in found)
    )


def code_changed_assets(states: list[AssetState]) -> set[dg.AssetKey]:
    """Assets with a partition that needs a rebuild: materialized under another code version
    than today's (a new model identity or prompt version), or older than an upstream partition
    rebuilt since (e.g. by a backfill that stopped half-way).

    Dagster marks downstream of a code change stale only after the changed asset rebuilds,
    so callers add the downstream themselves (`backfill_selection`).
    """
    by_key = {s.key: s for s in states}
    changed = set()
    for state in states:
        parents = [by_key[p] for p in state.parents if p in by_key]
        behind = any(
            p.built_ms(cohort) > built
            for cohort, built in state.materialized_ms.items()
            for p in parents
        )
        if state.code_changed or behind:
            changed.add(dg.AssetKey(state.key.split("/")))
    return changed


def backfill_selection(states: list[AssetState], changed: set[dg.AssetKey]) -> list[dg.AssetKey]:
    """The changed assets and everything downstream of them, in a stable order."""
    children = {s.key: s.children for s in states}
    todo = [k.to_user_string() for k in changed]
    selected: set[str] = set()
    while todo:
        key = todo.pop()
        if key not in selected:
            selected.add(key)
            todo.extend(children.get(key, ()))
    return [dg.AssetKey(k.split("/")) for k in sorted(selected)]


def launch_backfill(
    client: DagsterGraphQL, assets: list[dg.AssetKey], cohorts: list[str], title: str
) -> str:
    """Register a backfill over every cohort; the daemon (`dagster dev`) runs it."""
    params = {
        "assetSelection": [{"path": list(k.path)} for k in assets],
        "partitionNames": cohorts,
        "title": title,
        "description": "Rebuild of the assets whose model identity or prompt version changed.",
        "tags": [{"key": k, "value": v} for k, v in BACKFILL_TAGS.items()],
    }
    result = client.execute(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"backfill refused ({result['__typename']}): {result.get('message')}")
    return str(result["backfillId"])
