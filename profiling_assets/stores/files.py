"""Per-cohort file folders (documents, profiles), replaced as a whole so re-runs leave no strays."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from profiling_assets.stores.names import safe_cohort, safe_file_stem


def replace_cohort_files(
    root: Path, cohort: str, files: Iterable[tuple[str, str]], suffix: str
) -> int:
    """Write `(user_id, text)` pairs to `root/<cohort>/<user_id><suffix>` via a swap folder."""
    target = root / safe_cohort(cohort)
    staging = root / f".{cohort}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    count = 0
    for user_id, text in files:
        body = readable_json(text) if suffix == ".json" else text
        (staging / f"{safe_file_stem(user_id)}{suffix}").write_text(body, encoding="utf-8")
        count += 1
    old = root / f".{cohort}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return count


def readable_json(text: str) -> str:
    """Indented UTF-8 with the Chinese as characters, never `\\uXXXX` escapes: these files
    are read by people, whatever serializer produced the text."""
    return json.dumps(json.loads(text), ensure_ascii=False, indent=2) + "\n"
