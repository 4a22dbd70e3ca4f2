"""Field-by-field difference between two profiles of one user (e.g. before/after an upgrade)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from profiling_assets.core.profiling.schema import FIELD_LABELS


@dataclass(frozen=True)
class FieldChange:
    field: str
    label: str
    before: Any
    after: Any


def _comparable(field: dict[str, Any]) -> Any:
    value = field.get("value")
    if "probability" in field:
        return (value, field.get("probability"))
    return tuple(value) if isinstance(value, list) else value


def diff_profiles(before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """Fields whose value (or purchase probability) differs; evidence ids are not compared,
    since chunk ids change with any edit of the user's text."""
    changes = []
    for name, label in FIELD_LABELS.items():
        old, new = _comparable(before.get(name) or {}), _comparable(after.get(name) or {})
        if old != new:
            changes.append(FieldChange(name, label, old, new))
    return changes


def render_diff(
    user_id: str, before_label: str, after_label: str, changes: list[FieldChange]
) -> str:
    lines = [f"用户 {user_id}：{before_label} → {after_label}"]
    if not changes:
        lines.append("  两个画像的各字段取值相同")
    for change in changes:
        lines.append(f"  {change.label}（{change.field}）")
        lines.append(f"    - 之前：{change.before}")
        lines.append(f"    + 之后：{change.after}")
    return "\n".join(lines)
