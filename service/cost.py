"""The measured compute cost of a model, the basis of admission by estimated time (``admission.py``)."""

from __future__ import annotations

import math
from collections import deque


class CostEstimate:
    """Seconds per cost unit of one model, from how long its finished batches held the queue up
    (``ModelBatcher._drain_seconds``; O(WINDOW) each).

    The median of the last ``WINDOW`` batches' seconds per unit, the minimum while fewer than
    ``MEDIAN_FROM`` are measured: a cold first batch, or a slow one after the server sat idle, is an
    outlier that would otherwise make the service refuse work it can drain; a lasting change of speed
    (another version, a busier machine) is followed once it holds for half the window. Failed batches
    are not measured (a fast exception would read as a fast model). ``None`` until the first
    measurement: no estimate, no refusal by time.
    """

    WINDOW = 9
    MEDIAN_FROM = 3

    def __init__(self) -> None:
        self.rates: deque[float] = deque(maxlen=self.WINDOW)
        self.seconds_per_unit: float | None = None

    def observe(self, seconds: float, units: int) -> None:
        if units <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        self.rates.append(seconds / units)
        ordered = sorted(self.rates)
        if len(ordered) < self.MEDIAN_FROM:
            self.seconds_per_unit = ordered[0]
        else:
            mid = len(ordered) // 2
            self.seconds_per_unit = (
                ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
            )

    @property
    def count(self) -> int:
        return len(self.rates)

    def reset(self) -> None:
        self.rates.clear()
        self.seconds_per_unit = None
