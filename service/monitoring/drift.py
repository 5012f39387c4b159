"""Sliding-window drift of OOD scores against the checkpoint's ``drift_reference`` quantiles.

Cost: the window is a ring buffer of the last W scores plus per-bin counts over the reference grid
(the n ≈ 1000 reference quantiles q_0 ≤ … ≤ q_{n-1} cut the line into n + 1 bins). Adding a batch of b
scores costs O(b log n) (a binary search each, one count in, one evicted count out); the statistics
cost O(n) per batch, independent of W, so a window of 10,000 is as cheap as one of 100.

Statistics (all on the binned window, which is the approximation):

* PSI over 10 bins cut at the reference deciles, Σ (p_w − p_r) ln(p_w / p_r), proportions floored at
  1e-4 so an empty bin gives a large finite value instead of infinity.
* KS: max_j |F_w(q_j) − F_r(q_j)| evaluated at the reference quantiles, with F_r(q_j) = j / (n − 1).
  Exact for the window CDF at those points; the sup between grid points is missed by at most one
  reference step (1 / (n − 1) ≈ 0.001) plus the window mass inside that bin.
* Wasserstein-1: ∫ |F_w − F_r| dx by the trapezoid rule over the reference intervals, plus the exact
  mean distance of window scores beyond q_0 or q_{n-1} (running sums). The in-range error is bounded by
  the window mass inside each interval times its width (small except in sparse tails).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

PSI_BINS = 10
PSI_FLOOR = 1e-4


def psi(p_window: np.ndarray, p_reference: np.ndarray) -> float:
    """Σ (p_w − p_r) ln(p_w / p_r), both proportions floored at ``PSI_FLOOR`` (an empty bin gives a
    large finite value, not infinity): the one PSI of the uncertainty and per-feature drift gauges."""
    p_w, p_r = np.maximum(p_window, PSI_FLOOR), np.maximum(p_reference, PSI_FLOOR)
    return float(((p_w - p_r) * np.log(p_w / p_r)).sum())


@dataclass(frozen=True)
class DriftStats:
    psi: float
    ks: float
    wasserstein: float
    ood_rate: float
    count: int


@dataclass(frozen=True)
class WindowState:
    """What the statistics read of a window: its per-bin counts and four sums. Windows of several
    workers over the same reference merge by adding these (``service/monitoring/drift_share.py``)."""

    counts: np.ndarray  # int64, (n + 1,): scores per bin of the reference grid
    filled: int
    ood_sum: int
    below: float  # Σ (q_0 − s) over scores below the grid
    above: float  # Σ (s − q_{n-1}) over scores above it

    def __add__(self, other: WindowState) -> WindowState:
        if self.counts.shape != other.counts.shape:
            raise ValueError("windows over different reference grids cannot be merged")
        return WindowState(
            self.counts + other.counts,
            self.filled + other.filled,
            self.ood_sum + other.ood_sum,
            self.below + other.below,
            self.above + other.above,
        )

    def to_array(self) -> np.ndarray:
        """One float64 array [filled, ood_sum, below, above, counts...] (counts < 2**53: exact)."""
        head = np.array([self.filled, self.ood_sum, self.below, self.above], dtype=np.float64)
        return np.concatenate([head, self.counts.astype(np.float64)])

    @classmethod
    def from_array(cls, a: np.ndarray) -> WindowState:
        if a.ndim != 1 or a.size < 6 or not np.isfinite(a).all():
            raise ValueError("not a drift window state")
        return cls(a[4:].astype(np.int64), int(a[0]), int(a[1]), float(a[2]), float(a[3]))


class DriftMonitor:
    def __init__(self, reference: list[float], window: int, threshold: float) -> None:
        q = np.asarray(reference, dtype=np.float64)
        if q.ndim != 1 or q.size < 2:
            raise ValueError("the drift reference needs at least two quantiles")
        self.q = q
        self.n = q.size
        self.window = int(window)
        self.threshold = float(threshold)
        self._bins = np.zeros(self.window, dtype=np.int64)  # fine bin of each windowed score
        self._scores = np.zeros(self.window, dtype=np.float64)
        self._ood = np.zeros(self.window, dtype=bool)
        self._counts = np.zeros(self.n + 1, dtype=np.int64)  # bin k = number of reference quantiles < s
        self._pos = 0
        self._filled = 0
        self._ood_sum = 0
        self._below = 0.0  # Σ (q_0 − s) over windowed s < q_0
        self._above = 0.0  # Σ (s − q_{n-1}) over windowed s > q_{n-1}
        self._ref_cdf = np.arange(self.n, dtype=np.float64) / (self.n - 1)
        self._widths = np.diff(q)
        # decile edges as indices into q: the coarse bin of a score is the number of edges below it
        self._edge_idx = np.round(np.linspace(0, self.n - 1, PSI_BINS + 1)[1:-1]).astype(np.int64)
        self._ref_psi = np.diff(np.concatenate(([0.0], self._ref_cdf[self._edge_idx], [1.0])))
        self._lock = threading.Lock()
        #: scores added so far: whether the window changed since a state was last taken
        self.added = 0

    def add(self, scores: np.ndarray, flagged: np.ndarray | None = None) -> None:
        """Add a batch of scores, evicting the oldest: O(b log n). ``flagged``: the served OOD decision
        of each (the OOD rate's numerator); default, the score above this monitor's threshold."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        f = s > self.threshold if flagged is None else np.asarray(flagged, dtype=bool).ravel()
        if f.shape != s.shape:
            raise ValueError(f"{f.size} OOD decisions for {s.size} scores")
        s, f = s[-self.window :], f[-self.window :]
        with self._lock:
            ks = np.searchsorted(self.q, s, side="left").tolist()
            for value, k, odd in zip(s.tolist(), ks, f.tolist(), strict=True):
                self._push(value, int(k), bool(odd))
            self.added += int(s.size)

    def stats(self) -> DriftStats:
        """The statistics of the current window: O(n)."""
        return self.stats_of(self.state())

    def state(self) -> WindowState:
        """A snapshot of the window's counts and sums (O(n) copy)."""
        with self._lock:
            return WindowState(
                self._counts.copy(), self._filled, self._ood_sum, max(self._below, 0.0), max(self._above, 0.0)
            )

    def update(self, scores: np.ndarray) -> DriftStats:
        """Add a batch of scores (evicting the oldest) and return the statistics of the new window."""
        self.add(scores)
        return self.stats()

    def _push(self, value: float, k: int, flagged: bool) -> None:
        i = self._pos
        if self._filled == self.window:
            self._evict(i)
        else:
            self._filled += 1
        self._bins[i], self._scores[i] = k, value
        self._ood[i] = flagged
        self._ood_sum += int(flagged)
        self._counts[k] += 1
        if value < self.q[0]:
            self._below += self.q[0] - value
        elif value > self.q[-1]:
            self._above += value - self.q[-1]
        self._pos = (i + 1) % self.window

    def _evict(self, i: int) -> None:
        old = float(self._scores[i])
        self._counts[self._bins[i]] -= 1
        self._ood_sum -= int(self._ood[i])
        if old < self.q[0]:
            self._below -= self.q[0] - old
        elif old > self.q[-1]:
            self._above -= old - self.q[-1]

    def stats_of(self, state: WindowState) -> DriftStats:
        """The statistics of a window state over this monitor's reference (its own, or merged): O(n)."""
        m = state.filled
        if m == 0:
            return DriftStats(0.0, 0.0, 0.0, 0.0, 0)
        if state.counts.shape != self._counts.shape:
            raise ValueError("the window state is over a different reference grid")
        # window CDF at q_j: scores s ≤ q_j are exactly those with bin k ≤ j
        cdf = np.cumsum(state.counts[: self.n]) / m
        diff = np.abs(cdf - self._ref_cdf)
        ks = float(diff.max())
        inner = 0.5 * (diff[:-1] + diff[1:])  # trapezoid between neighbouring reference quantiles
        w1 = float((inner * self._widths).sum() + (state.below + state.above) / m)
        coarse_cdf = np.concatenate(([0.0], cdf[self._edge_idx], [1.0]))
        return DriftStats(psi(np.diff(coarse_cdf), self._ref_psi), ks, w1, state.ood_sum / m, m)
