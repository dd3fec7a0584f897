"""One benchmark number: value, unit, the goal it is held to, and what was measured."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Optional

_COMPARISONS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Goal:
    """`value op target`, e.g. Goal("<=", 1.02)."""

    op: str
    target: float

    def __post_init__(self):
        if self.op not in _COMPARISONS:
            raise ValueError(f"goal operator must be one of {', '.join(_COMPARISONS)}, got {self.op!r}")

    def met(self, value: float) -> bool:
        return math.isfinite(value) and _COMPARISONS[self.op](value, self.target)

    def __str__(self) -> str:
        return f"{self.op} {self.target:g}"


@dataclass
class BenchEntry:
    """A row of the bench table. Entries without a goal are measured for comparison only."""

    name: str
    value: float
    unit: str
    goal: Optional[Goal] = None
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> Optional[bool]:
        return None if self.goal is None else self.goal.met(self.value)

    def to_json(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "goal": None if self.goal is None else str(self.goal), "met": self.met, "details": self.details}
