"""Conditions a business spec writes over computed facts: `order_count >= 2 and 近期发言 ...`.

A condition is clauses joined by `and` (`且`); a clause compares one fact with a value
(`recent_chat_count >= 3`, `spending_level == 高`) or asks whether the user has a label
candidate (`label == 准备预约`). Several rules give "or". Parsed once when the spec is
loaded, so a typo is an error naming the spec field, never a surprise mid-run.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

# Facts a condition may name, with whether they hold text (compared with == / != only).
NUMERIC_FACTS: tuple[str, ...] = (
    "total_spend",
    "order_count",
    "monetary_avg",
    "purchase_frequency_per_month",
    "days_since_last_purchase",
    "days_since_last_activity",
    "browse_count",
    "chat_count",
    "recent_order_count",
    "recent_browse_count",
    "recent_chat_count",
    "age",
)
TEXT_FACTS: tuple[str, ...] = ("spending_level", "gender", "rfm_segment")
LABEL_FACT = "label"

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_JOINER = re.compile(r"\s+(?:and|且)\s+|\s*且\s*")


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message says which part and why."""


@dataclass(frozen=True)
class Clause:
    name: str
    op: str
    value: float | str

    def holds(self, facts: Mapping[str, Any], labels: Collection[str]) -> bool:
        if self.name == LABEL_FACT:
            present = self.value in labels
            return present if self.op == "==" else not present
        actual = facts.get(self.name)
        if actual is None:
            return False  # an unknown fact (no purchase yet: no recency) satisfies nothing
        return _OPS[self.op](actual, self.value)

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"{self.name} {self.op} {value}"


@dataclass(frozen=True)
class Condition:
    clauses: tuple[Clause, ...]
    text: str

    def holds(self, facts: Mapping[str, Any], labels: Collection[str] = ()) -> bool:
        return all(clause.holds(facts, labels) for clause in self.clauses)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(c.value) for c in self.clauses if c.name == LABEL_FACT)

    def __str__(self) -> str:
        return self.text


def parse_condition(text: str) -> Condition:
    """`text` → `Condition`; raises `ConditionError` naming the clause that is wrong."""
    if not text or not text.strip():
        raise ConditionError("条件为空 / empty condition")
    clauses = []
    for part in _JOINER.split(text.strip()):
        match = _CLAUSE.match(part)
        if not match:
            raise ConditionError(f"无法解析 “{part}”：应为 事实 运算符 值，如 order_count >= 2")
        name, op, raw = match.groups()
        clauses.append(_clause(name, op, raw.strip().strip("'\"")))
    return Condition(tuple(clauses), text.strip())


def _clause(name: str, op: str, raw: str) -> Clause:
    if name in NUMERIC_FACTS:
        try:
            return Clause(name, op, float(raw))
        except ValueError:
            raise ConditionError(f"{name} 需要数字，得到 “{raw}”") from None
    if name in (*TEXT_FACTS, LABEL_FACT):
        if op not in ("==", "!="):
            raise ConditionError(f"{name} 只能用 == 或 != 比较，得到 {op}")
        if not raw:
            raise ConditionError(f"{name} 的比较值为空")
        return Clause(name, op, raw)
    known = ", ".join((*NUMERIC_FACTS, *TEXT_FACTS, LABEL_FACT))
    raise ConditionError(f"未知事实 “{name}”；可用：{known}")
