"""Grammar-only tightening of a JSON schema for a small model (gemma-3-270m and the like),
shared by every backend that asks a small model for the compact schema. No imports of any
model client, so choosing one backend never loads another's."""

from __future__ import annotations

from typing import Any

_GRID = [round(i / 10, 1) for i in range(11)]
# A free-text character for the small model: no quote, backslash (so no `\\uXXXX` escapes,
# 6+ tokens per character), control character or ASCII digit (digit runs such as
# `1000000000` are its favourite filler). The facts carry every number the profile needs.
PLAIN_CHAR = r"[^\"\\\x00-\x1f\x7f0-9]"


def tighten_for_small_model(schema: dict[str, Any]) -> dict[str, Any]:
    """Grammar-only tightening for a 270M model. Every answer this allows still validates
    against the schema it was given.

    - Numbers become a 0.1 grid: under a plain `number` it writes `0.000000…` until
      `max_tokens`.
    - Free strings get a `pattern` of `PLAIN_CHAR`s within their `maxLength`: llguidance
      quotes a pattern's characters canonically, so no escape sequence can be written at
      all. (A CJK-only pattern was tried and dropped: it made grammar masking ~6x slower.)
    """

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            if out.get("type") == "number":
                out = {k: v for k, v in out.items() if k not in {"minimum", "maximum"}}
                out["enum"] = _GRID
            if out.get("type") == "string" and "enum" not in out and "pattern" not in out:
                limit = out.get("maxLength")
                count = f"{{0,{limit}}}" if limit is not None else "*"
                out["pattern"] = f"^{PLAIN_CHAR}{count}$"
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
