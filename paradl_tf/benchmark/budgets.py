"""Time budgets: each part's wall-clock budget, and whether the next process would end past it."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """A part's wall-clock budget: a process that would end past `deadline` is reported as skipped."""

    part: str
    seconds: float
    deadline: float

    @classmethod
    def start(cls, part: str, seconds: float) -> Budget:
        return cls(part, seconds, time.monotonic() + seconds)

    def fits(self, method: str) -> bool:
        """Whether a process of `method` would likely end before the deadline (its last wall time, else the
        median of all so far)."""
        expected = _METHOD_WALLS.get(method) or (statistics.median(_WALLS) if _WALLS else 0.0)
        return time.monotonic() + expected <= self.deadline


_WALLS: list[float] = []  # wall seconds of the processes run so far: what the next one will likely take
# The last wall of each method: a local cluster's processes take several times the median.
_METHOD_WALLS: dict[str, float] = {}


def record_wall(method: str, seconds: float) -> None:
    """A process of `method` took `seconds`: what the next ones will likely take."""
    _WALLS.append(seconds)
    _METHOD_WALLS[method] = seconds


def forget_walls() -> None:
    """A new run: its machine and modes may differ from the last one's."""
    _WALLS.clear()
    _METHOD_WALLS.clear()
