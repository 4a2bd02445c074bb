"""Temperature schedules for Gradual Fine-Tuning: from ``start`` down to exactly 0.

With progress ``p = min(step / steps, 1)``:

* ``linear``:      ``tau = start (1 - p)``
* ``cosine``:      ``tau = start (1 + cos(pi p)) / 2``
* ``exponential``: ``tau = start (exp(-r p) - exp(-r)) / (1 - exp(-r))``, a geometric decay at
  rate ``r`` shifted so that it reaches 0 at ``p = 1`` (a plain ``start * exp(-r p)`` never does)
* ``adaptive``:    a staircase of ``levels`` equal steps from ``start`` to 0; the temperature
  drops one level as soon as the current objective has converged (its running mean has not
  improved by a relative ``tolerance`` for ``patience`` iterations), and at the latest when
  the linear staircase would (level ``floor(levels p)``), so it too reaches 0 by ``steps``.

Every schedule is 0 from ``step = steps`` on: the end of the run trains on the target.

Example:
    >>> s = TemperatureSchedule("cosine", start=1.0, steps=100)
    >>> s.value(0), s.value(50), s.value(100), s.value(1000)
    (1.0, 0.5, 0.0, 0.0)
    >>> a = TemperatureSchedule("adaptive", steps=100, levels=4, patience=5)
    >>> for k in range(20):
    ...     a.observe(k, 1.0)  # a flat loss has converged: the temperature drops early
    >>> a.value(20) < 0.75
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["SCHEDULES", "TemperatureSchedule"]

SCHEDULES = ("linear", "cosine", "exponential", "adaptive")


class TemperatureSchedule:
    """The temperature ``tau(step)`` in ``[0, start]``, reaching 0 at ``step = steps``.

    Args:
        kind: one of :data:`SCHEDULES`.
        start: initial temperature in ``(0, 1]``.
        steps: iterations until the temperature is 0 (>= 1).
        rate: decay rate of ``exponential`` (> 0).
        levels, patience, tolerance, ema: the ``adaptive`` staircase and its convergence
            test (running mean of the loss with decay ``ema``).
    """

    def __init__(
        self,
        kind: str = "linear",
        *,
        start: float = 1.0,
        steps: int = 1000,
        rate: float = 4.0,
        levels: int = 10,
        patience: int = 25,
        tolerance: float = 0.02,
        ema: float = 0.9,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(
                f"unknown temperature schedule {kind!r}; choose {', '.join(SCHEDULES)}"
            )
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"temperature start must lie in [0, 1], got {start}")
        if steps < 1:
            raise ValueError(f"the temperature needs steps >= 1 to reach 0, got {steps}")
        if kind == "exponential" and not rate > 0:
            raise ValueError(f"exponential temperature needs rate > 0, got {rate}")
        if levels < 1 or patience < 1:
            raise ValueError(
                f"adaptive temperature needs levels, patience >= 1: {levels}, {patience}"
            )
        self.kind = kind
        self.start = float(start)
        self.steps = int(steps)
        self.rate = float(rate)
        self.levels = int(levels)
        self.patience = int(patience)
        self.tolerance = float(tolerance)
        self.ema = float(ema)
        # adaptive state
        self.level = 0
        self.running: float | None = None
        self.best: float | None = None
        self.since_best = 0
        self.at_level = 0

    def _progress(self, step: int) -> float:
        return min(max(step, 0) / self.steps, 1.0)

    def value(self, step: int) -> float:
        """The temperature at training iteration ``step`` (exactly 0 once ``step >= steps``)."""
        p = self._progress(step)
        if p >= 1.0 or self.start == 0.0:
            return 0.0
        if self.kind == "linear":
            return self.start * (1.0 - p)
        if self.kind == "cosine":
            return self.start * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.kind == "exponential":
            r = self.rate
            return self.start * (math.exp(-r * p) - math.exp(-r)) / (1.0 - math.exp(-r))
        level = max(self.level, math.floor(self.levels * p))
        return self.start * max(0.0, 1.0 - level / self.levels)

    def observe(self, step: int, loss: float) -> None:
        """Feed the objective at ``step`` (only ``adaptive`` uses it)."""
        if self.kind != "adaptive" or not math.isfinite(loss):
            return
        forced = math.floor(self.levels * self._progress(step))
        if forced > self.level:  # the deadline moved the staircase: a new objective
            self._next_level(forced)
        self.running = (
            loss if self.running is None else self.ema * self.running + (1 - self.ema) * loss
        )
        self.at_level += 1
        if self.best is None or self.running < self.best * (1.0 - self.tolerance):
            self.best = self.running
            self.since_best = 0
        else:
            self.since_best += 1
        if self.since_best >= self.patience and self.at_level >= self.patience:
            self._next_level(self.level + 1)

    def _next_level(self, level: int) -> None:
        self.level = min(level, self.levels)
        self.running = self.best = None
        self.since_best = self.at_level = 0

    def state_dict(self) -> dict[str, Any]:
        """The adaptive state (JSON-serialisable), for checkpoints."""
        return {
            "level": self.level,
            "running": self.running,
            "best": self.best,
            "since_best": self.since_best,
            "at_level": self.at_level,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.level = int(state["level"])
        self.running = None if state["running"] is None else float(state["running"])
        self.best = None if state["best"] is None else float(state["best"])
        self.since_best = int(state["since_best"])
        self.at_level = int(state["at_level"])
