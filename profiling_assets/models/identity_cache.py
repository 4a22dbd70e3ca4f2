"""Last known server-side model identities, so a server that is down for a moment does not
change `code_version` (which would mark every model-dependent asset as changed)."""

from __future__ import annotations

import json
from pathlib import Path

from profiling_assets.models.base import ModelIdentity

CACHE_FILE = "model_identities.json"


def _key(identity: ModelIdentity, host: str) -> str:
    return f"{identity.backend}|{identity.model}|{host}"


def stable_identity(identity: ModelIdentity, host: str, data_dir: Path) -> ModelIdentity:
    """Remember a digest the server reported; reuse it when the server cannot say. `host` is
    the setting as configured: one server's URL (the key it always had), or a pool's list,
    whose identity is the pool's (`pool_identity`), whichever of its servers reported it."""
    path = data_dir / CACHE_FILE
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}  # a broken cache only costs the reuse; the fresh answer still stands
    key = _key(identity, host)
    if identity.version:
        if cache.get(key) != identity.model_dump():
            cache[key] = identity.model_dump()
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, ensure_ascii=False, indent=1), encoding="utf-8")
        return identity
    known = cache.get(key)
    if known is None:
        return identity
    reason = identity.note or "server gave no digest"
    return ModelIdentity(**{**known, "note": f"last known digest ({reason})"[:200]})


def stable_count(name: str, value: int, host: str, data_dir: Path) -> int:
    """Remember a count a server reported (a model's parameters); reuse the last one while it
    cannot say (0), so a server that is down does not flip what depends on it."""
    path = data_dir / CACHE_FILE
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    key = f"count|{name}|{host}"
    if value:
        if cache.get(key) != value:
            cache[key] = value
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, ensure_ascii=False, indent=1), encoding="utf-8")
        return value
    known = cache.get(key)
    return int(known) if isinstance(known, int) else 0
