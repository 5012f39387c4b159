"""Sliding-window drift of each input feature against its training distribution (drift_reference.features).

Which input moved: a creatinine sent in µmol/L instead of mg/dL moves ``crea``'s gauge and no other.
The window is a ring buffer of the last W rows' bins (one small integer per feature) plus per-feature
bin counts. A request only queues its rows; they are binned together (``FeatureBinner``,
vectorised) and counted in (one count in and one evicted count out per feature and row) when the
queue reaches ``FOLD_ROWS`` or a state is read, which every publish does at most every 100 ms: O(F)
per row, in a few large numpy calls instead of a dozen small ones per request. The statistics cost
O(F·n) per publish, independent of W. Windows of several workers over the same reference merge by
adding counts (``drift_share.py``).

Statistics, as the uncertainty drift's (``drift.py``) so the two read alike:

* numeric: PSI over 10 bins cut at the reference deciles, proportions floored at 1e-4, the training
  share of each bin taken from the stored training CDF (``FeatureDistribution.cdf``: where values tie,
  e.g. an imputed median, a bin is empty or holds more than a tenth, on both sides alike); KS as
  max_j |F_w(q_j) − F_r(q_j)| at the reference quantiles (exact there; between grid points the sup is
  missed by at most one reference step plus the window mass inside that bin);
* categorical: PSI over the categories plus one bin for categories training never saw (reference share
  0, floored); no KS (categories have no order).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from model_core.feature_reference import FeatureBinner
from service.monitoring.drift import PSI_BINS, psi

FEATURE_STATISTICS = ("psi", "ks")
#: queued rows binned at once at the latest (a publish, at most every 100 ms, folds them earlier)
FOLD_ROWS = 512


@dataclass(frozen=True)
class FeatureWindowState:
    """Per-feature bin counts (F, B) and the rows they hold: merged across workers by addition."""

    counts: np.ndarray
    filled: int

    def __add__(self, other: FeatureWindowState) -> FeatureWindowState:
        if self.counts.shape != other.counts.shape:
            raise ValueError("feature windows over different references cannot be merged")
        return FeatureWindowState(self.counts + other.counts, self.filled + other.filled)

    def to_array(self) -> np.ndarray:
        """[filled, F, B, counts...] as float64 (counts < 2**53: exact)."""
        f, b = self.counts.shape
        return np.concatenate(
            [np.array([self.filled, f, b], dtype=np.float64), self.counts.ravel().astype(np.float64)]
        )

    @classmethod
    def from_array(cls, a: np.ndarray) -> FeatureWindowState:
        if a.ndim != 1 or a.size < 3 or not np.isfinite(a).all():
            raise ValueError("not a feature window state")
        f, b = int(a[1]), int(a[2])
        if a.size != 3 + f * b:
            raise ValueError("not a feature window state")
        return cls(a[3:].astype(np.int64).reshape(f, b), int(a[0]))


class FeatureDriftMonitor:
    def __init__(self, binner: FeatureBinner, window: int) -> None:
        self.binner = binner
        self.window = int(window)
        self.names = binner.names
        f = len(self.names)
        self._rows = np.zeros((self.window, f), dtype=np.int64)  # bins of each windowed row
        self._counts = np.zeros((f, int(binner.bins.max())), dtype=np.int64)
        self._cols = np.arange(f)
        self._pos = 0
        self._filled = 0
        self._lock = threading.Lock()
        self._pending: list[np.ndarray] = []  # batches added since the last fold
        self._pending_rows = 0
        self.added = 0
        n = binner.quantiles.shape[1]
        self._n = n
        #: per numeric feature (by feature index): its training CDF at the quantiles, and the training
        #: share of each PSI bin (cut at the reference deciles; a tie makes a bin empty on both sides)
        self._edge_idx = np.round(np.linspace(0, n - 1, PSI_BINS + 1)[1:-1]).astype(np.int64)
        self._ref_cdf: dict[int, np.ndarray] = {}
        self._ref_psi: dict[int, np.ndarray] = {}
        for row, j in enumerate(binner.numeric_idx.tolist()):
            cdf = binner.cdf[row]
            self._ref_cdf[j] = cdf
            self._ref_psi[j] = np.diff(np.concatenate(([0.0], cdf[self._edge_idx], [1.0])))

    def add(self, z: np.ndarray) -> None:
        """Add a batch of preprocessed rows (``Encoded.z``): queued, and binned with the others queued
        since the last fold (every ``FOLD_ROWS`` rows, and before any state is read). A request pays an
        append; the binning runs vectorised over many requests at once, about every 100 ms."""
        b = int(z.shape[0])
        if b == 0:
            return
        with self._lock:
            self._pending.append(z)
            self._pending_rows += b
            self.added += b
            if self._pending_rows >= FOLD_ROWS:
                self._fold()

    def _fold(self) -> None:
        """(lock held) Bin the queued rows into the window, evicting the oldest: O(rows·F)."""
        if not self._pending:
            return
        z = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending.clear()
        self._pending_rows = 0
        bins = self.binner.bin(z)[-self.window :]
        b = int(bins.shape[0])
        slots = (self._pos + np.arange(b)) % self.window
        # the slots after the free ones (while filling, the free ones come first) hold the oldest rows
        evicted = max(0, self._filled + b - self.window)
        if evicted:
            old = self._rows[slots[b - evicted :]]
            np.subtract.at(self._counts, (np.broadcast_to(self._cols, old.shape), old), 1)
        self._rows[slots] = bins
        np.add.at(self._counts, (np.broadcast_to(self._cols, bins.shape), bins), 1)
        self._filled = min(self.window, self._filled + b)
        self._pos = int((self._pos + b) % self.window)

    def state(self) -> FeatureWindowState:
        with self._lock:
            self._fold()
            return FeatureWindowState(self._counts.copy(), self._filled)

    def stats_of(self, state: FeatureWindowState) -> dict[str, dict[str, float]]:
        """feature -> {"psi": ..., "ks": ...} (categorical: psi only); zeros for an empty window."""
        m = state.filled
        out: dict[str, dict[str, float]] = {}
        for j, (name, kind, ref) in enumerate(
            zip(self.names, self.binner.kinds, self.binner.reference, strict=True)
        ):
            if m == 0:
                out[name] = {"psi": 0.0} if kind != "numeric" else {"psi": 0.0, "ks": 0.0}
                continue
            counts = state.counts[j]
            if kind == "numeric":
                cdf = np.cumsum(counts[: self._n]) / m
                ks = float(np.abs(cdf - self._ref_cdf[j]).max())
                coarse = np.concatenate(([0.0], cdf[self._edge_idx], [1.0]))
                out[name] = {"psi": psi(np.diff(coarse), self._ref_psi[j]), "ks": ks}
            else:
                k = len(ref.proportions or [])
                out[name] = {"psi": psi(counts[: k + 1] / m, np.asarray([*(ref.proportions or []), 0.0]))}
        return out
