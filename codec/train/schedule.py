"""Values that change with the training step: the recipe's ``train.schedules``.

A schedule is a list of ``[step, value]`` points, piecewise linear between them and held flat
before the first and after the last. Two points at the same step make a jump: from that step
on the later one holds. Each schedule drives one target (``TARGETS``)::

    schedules:
      loss:
        dc: [[4000, 0], [5000, 50]]           # the DC term enters late, ramped over 1,000 steps
      quantizer:
        dropout: [[3000, 0], [6000, 0.5]]
      data:
        tone_fraction: [[4000, 0], [4000, 0.15]]
      lr:
        encoder: [[3000, 1], [3000, 0.2]]     # a multiplier of the lr schedule; 0 freezes the part

(nested as above, or with dotted names: ``loss.dc: ...``; ``--set schedules.loss.dc=[[0,0],[900,50]]``).

A target without a schedule keeps its recipe value (``train.loss.<term>``,
``model.quantizer.dropout``, ``train.data.tone_fraction`` / ``rumble_fraction``; lr multipliers 1).
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping

from codec.recipe import ConfigError
from codec.train.losses import TERM_NAMES

#: The model parts that have their own lr multiplier (``lr.<part>``).
LR_PARTS = ("encoder", "decoder", "quantizer")
#: Every name a schedule may drive.
TARGETS = (*(f"loss.{t}" for t in TERM_NAMES), "quantizer.dropout", "data.tone_fraction",
           "data.rumble_fraction", *(f"lr.{p}" for p in LR_PARTS))
#: Targets whose values are probabilities.
_PROBABILITIES = ("quantizer.dropout", "data.tone_fraction", "data.rumble_fraction")


class Schedule:
    """A piecewise-linear function of the step. ``Schedule([[0, 1.0], [100, 0.0]])(50)`` is 0.5.

    points: ``[step, value]`` pairs, steps non-decreasing and >= 0 (ConfigError otherwise)."""

    def __init__(self, points: list, name: str = "schedule") -> None:
        try:
            pts = [(int(s), float(v)) for s, v in points]
        except (TypeError, ValueError):
            raise ConfigError(f"train.schedules.{name}: expected [[step, value], ...], got {points!r}") from None
        if not pts:
            raise ConfigError(f"train.schedules.{name}: needs at least one [step, value] point")
        if any(s < 0 for s, _ in pts) or any(b[0] < a[0] for a, b in itertools.pairwise(pts)):
            raise ConfigError(f"train.schedules.{name}: steps must be >= 0 and non-decreasing, got {points!r}")
        self.steps = [s for s, _ in pts]
        self.values = [v for _, v in pts]

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """The schedule that is ``value`` at every step."""
        return cls([[0, value]])

    @classmethod
    def of(cls, value: float | Schedule) -> Schedule:
        """``value`` itself if it is a schedule, else the constant schedule of it."""
        return value if isinstance(value, Schedule) else cls.constant(value)

    def __call__(self, step: int) -> float:
        """The value at ``step`` (an int >= 0): linear between the points around it."""
        i = bisect.bisect_right(self.steps, step)  # points at or before step: [0, i)
        if i == 0:
            return self.values[0]
        if i == len(self.steps):
            return self.values[-1]
        s0, s1, v0, v1 = self.steps[i - 1], self.steps[i], self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)  # s1 > s0: equal steps end up left of i

    def bounds(self) -> tuple[float, float]:
        """(smallest, largest) value it takes."""
        return min(self.values), max(self.values)


def _flatten(spec: Mapping, prefix: str = "") -> dict[str, object]:
    """{"loss": {"dc": pts}} -> {"loss.dc": pts}: a mapping nests, anything else is a leaf."""
    out: dict[str, object] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, Mapping) else {name: value})
    return out


def parse_schedules(spec: Mapping | None) -> dict[str, Schedule]:
    """The recipe's ``train.schedules`` (nested or dotted) -> {target: Schedule}. ConfigError
    for an unknown target, a negative value, or a probability outside [0, 1]."""
    out: dict[str, Schedule] = {}
    for name, points in _flatten(spec or {}).items():
        if name not in TARGETS:
            raise ConfigError(f"train.schedules: unknown target {name!r} (one of {', '.join(TARGETS)})")
        sched = Schedule(points, name)
        lo, hi = sched.bounds()
        if lo < 0 or (name in _PROBABILITIES and hi > 1):
            limits = "in [0, 1]" if name in _PROBABILITIES else ">= 0"
            raise ConfigError(f"train.schedules.{name}: values must be {limits}, got {points!r}")
        out[name] = sched
    return out
