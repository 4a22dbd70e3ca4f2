"""Wording of the sample data: two phrasebooks ("standard" and "alt") that say the same things
differently, so the pipeline can be evaluated on phrasing it was never tuned on.

The wording itself is data, `phrasebooks.toml`: each entry holds both styles side by side.
Templates take `{a}` (an alias of the user's intended project), `{p}` (an alias of an item
the user bought before) and `{d}` (a doctor page). Aliases rarely repeat the label name,
so most signals reach the profile indirectly, as they do in real chat logs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

Style = Literal["standard", "alt"]
EventTemplate = tuple[str, str]  # (event_type, target template)


@dataclass(frozen=True)
class Phrasebook:
    aliases: dict[str, tuple[str, ...]]
    project_chat: dict[str, tuple[str, ...]]
    generic_project_chat: tuple[str, ...]
    project_events: tuple[EventTemplate, ...]
    doctor_fields: dict[str, str]
    doctor_format: str
    concern_chat: dict[str, tuple[str, ...]]
    concern_events: dict[str, tuple[EventTemplate, ...]]
    tag_chat: dict[str, tuple[str, ...]]
    tag_events: dict[str, tuple[EventTemplate, ...]]
    intent_chat: dict[str, tuple[str, ...]]
    intent_events: dict[str, tuple[EventTemplate, ...]]
    noise_chat: tuple[str, ...]
    noise_events: tuple[EventTemplate, ...]
    flood_chat: tuple[str, ...]
    refund_chat: tuple[str, ...]
    refund_events: tuple[EventTemplate, ...]
    noise_items: tuple[tuple[str, float], ...]  # (item, price) sold over the counter
    channels: tuple[str, ...]
    channel_weights: tuple[float, ...]


PHRASEBOOKS_FILE = Path(__file__).with_name("phrasebooks.toml")
STYLES: tuple[Style, ...] = ("standard", "alt")
T = TypeVar("T")


def _frozen(value: Any) -> Any:
    """TOML arrays as tuples, as the generators expect (and hash)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _pick(entry: dict[str, Any], style: Style) -> Any:
    """One style's wording of a field: per label for a field of labels (`aliases`,
    `tag_chat`, …), else the field's own value."""
    if set(entry) == set(STYLES):
        return _frozen(entry[style])
    return {label: _frozen(both[style]) for label, both in entry.items()}


def load_styled(wording: type[T], path: Path, style: Style) -> T:
    """The dataclass `wording` filled with one style's entries of the TOML file at `path`,
    which gives every field's wording in both styles side by side."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected 'standard' or 'alt'")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return wording(**{f.name: _pick(data[f.name], style) for f in fields(wording)})  # type: ignore[arg-type]


@cache
def phrasebook(style: Style) -> Phrasebook:
    return load_styled(Phrasebook, PHRASEBOOKS_FILE, style)
