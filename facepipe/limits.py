"""The range of a numeric setting (``Limit``), the ranges several stages share, and the cap on worker counts.

Each stage's settings, with their ranges, are in ``facepipe.settings``. Worker counts are not bounded there
but capped by the CPUs this process may use (``usable_workers``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from facepipe.common import usable_cpus


@dataclass(frozen=True)
class Limit:
    """The range of one numeric setting: whole numbers (``whole``) or finite numbers from ``low`` to ``high``
    (None: no bound on that side), each bound excluded where its ``*_open`` says so."""

    low: float | None = None
    high: float | None = None
    whole: bool = True
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """``a whole number from 1 to 100``, ``a finite number above 0 and at most 1``..."""
        kind = "a whole number" if self.whole else "a finite number"
        low = None if self.low is None else f"{'above' if self.low_open else 'at least'} {self._shown(self.low)}"
        high = None if self.high is None else f"{'below' if self.high_open else 'at most'} {self._shown(self.high)}"
        if low and high and not (self.low_open or self.high_open):
            return f"{kind} from {self._shown(self.low)} to {self._shown(self.high)}"
        return " ".join([kind, " and ".join(bound for bound in (low, high) if bound)]).strip()

    def _shown(self, bound: float) -> str:
        return str(int(bound)) if self.whole else f"{bound:g}"

    def admits(self, value) -> bool:
        """Whether ``value`` is a number of this kind within this range (True, False and nan are not)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.whole else numbers.Real):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or self.high_open and value == self.high)


def option_name(name: str) -> str:
    """A stage argument as the command line spells it: ``min_neighbors`` -> ``--min-neighbors``."""
    return "--" + name.replace("_", "-")


def usable_workers(requested: int) -> int:
    """``requested`` worker processes, but no more than the CPUs this process may use (more would only wait
    for them, and hundreds of thousands would never start)."""
    return min(int(requested), usable_cpus())


SEED = Limit(0, 2**32 - 1)  # NumPy's, scikit-learn's and PyTorch's seeds all take these
WORKERS = Limit(1)  # no more than usable_workers start, however many are asked for
SAME_PERSON_THRESHOLD = Limit(0, 4, whole=False, low_open=True, high_open=True)  # L2 between unit vectors: < 2
MAX_K = 10_000
