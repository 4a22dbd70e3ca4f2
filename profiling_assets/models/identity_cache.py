"""Last known server-side model identities, so a server that is down for a moment does not
change `code_version` (which would mark every model-dependent asset as changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from profiling_assets.models.base import ModelIdentity

CACHE_FILE = "model_identities.json"


def _key(identity: ModelIdentity, host: str) -> str:
    return f"{identity.backend}|{identity.model}|{host}"


def _read_cache(data_dir: Path) -> dict[str, Any]:
    path = data_dir / CACHE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {}  # a broken cache only costs the reuse; the fresh answer still stands


def _remember(data_dir: Path, key: str, value: Any) -> None:
    """Store `value` under `key`; the file is written only when it changes."""
    cache = _read_cache(data_dir)
    if cache.get(key) != value:
        cache[key] = value
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / CACHE_FILE
        path.write_text(json.dumps(cache, ensure_ascii=False, indent=1), encoding="utf-8")


def stable_identity(identity: ModelIdentity, host: str, data_dir: Path) -> ModelIdentity:
    """Remember a digest the server reported; reuse it when the server cannot say. `host` is
    the setting as configured: one server's URL (the key it always had), or a pool's list,
    whose identity is the pool's (`pool_identity`), whichever of its servers reported it."""
    key = _key(identity, host)
    if identity.version:
        _remember(data_dir, key, identity.model_dump())
        return identity
    known = _read_cache(data_dir).get(key)
    if known is None:
        return identity
    reason = identity.note or "server gave no digest"
    return ModelIdentity(**{**known, "note": f"last known digest ({reason})"[:200]})


def stable_count(name: str, value: int, host: str, data_dir: Path) -> int:
    """Remember a count a server reported (a model's parameters); reuse the last one while it
    cannot say (0), so a server that is down does not flip what depends on it."""
    key = f"count|{name}|{host}"
    if value:
        _remember(data_dir, key, value)
        return value
    known = _read_cache(data_dir).get(key)
    return int(known) if isinstance(known, int) else 0
