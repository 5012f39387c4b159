"""Each input feature's training distribution, and the binning that the served per-feature drift uses.

A reference per feature lets the server say *which* input moved (a lab reported in another unit, a
new patient group), where the uncertainty and novelty drift only say that something did. Stored in the
manifest (``drift_reference.features``): for a numeric feature ``REFERENCE_QUANTILES`` evenly spaced
quantiles of its training column on the preprocessed, unclipped scale (the ``z`` the novelty detector
reads, so a unit error is not hidden by clipping); for a categorical feature the share of each category.

What a "row" is per input kind: a tabular instance itself; a sequence window's latest hour (each
hourly reading is the latest hour of some window of a stream of forecasts, and the latest one is what
a feed error hits first); a text's two derived features, ``token_length`` (word tokens after the
[CLS], at most the tokenizer's ``max_len`` − 1) and ``unknown_token_rate`` (the share of them that are
[UNK]: vocabulary the model never learnt, e.g. another domain or language).

:class:`FeatureBinner` maps a batch of rows to one bin per feature: numeric bin k = the number of
reference quantiles strictly below the value (0..n), categorical bin = the category's index, or
``len(categories)`` for a category training never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model_core.checkpoint.manifest import FeatureDistribution
from model_core.data.preprocessing import Preprocessor
from model_core.data.tokenizer import PAD_ID, UNK_ID

REFERENCE_QUANTILES = 101
#: the derived features of a text model, in this order
TEXT_FEATURES = ("token_length", "unknown_token_rate")


def latest_hour(z: np.ndarray) -> np.ndarray:
    """A batch of windows (n, hours, columns) -> each window's latest hour (n, columns)."""
    return np.asarray(z)[:, -1, :]


def text_features(ids: np.ndarray) -> np.ndarray:
    """Token ids (n, max_len; [CLS] first, [PAD]-padded) -> (n, 2): token length, unknown-token rate."""
    ids = np.asarray(ids)
    length = (ids != PAD_ID).sum(axis=1) - 1  # the [CLS]
    unknown = (ids == UNK_ID).sum(axis=1)
    rate = np.where(length > 0, unknown / np.maximum(length, 1), 0.0)
    return np.stack([length.astype(np.float64), rate.astype(np.float64)], axis=1)


def _numeric(name: str, column: np.ndarray, n: int) -> FeatureDistribution:
    """Quantiles of the column and its empirical CDF at each: where values tie (an imputed median, a
    count, a 0/1 flag) the CDF jumps, and a reference that assumed j / (n - 1) would call the training
    distribution itself drifted."""
    col = np.sort(column[np.isfinite(column)].astype(np.float64))
    q = np.quantile(col, np.linspace(0.0, 1.0, REFERENCE_QUANTILES))
    cdf = np.searchsorted(col, q, side="right") / col.size
    return FeatureDistribution(name=name, kind="numeric", quantiles=q.tolist(), cdf=cdf.tolist(), n=n)


def fit_text_reference(ids: np.ndarray) -> list[FeatureDistribution]:
    """The reference of a text model: its training texts' token lengths and unknown-token rates."""
    values = text_features(ids)
    return [_numeric(name, values[:, j], len(values)) for j, name in enumerate(TEXT_FEATURES)]


def _offsets(pre: Preprocessor) -> dict[str, int]:
    out, at = {}, 0
    for spec in pre.features:
        out[spec.name] = at
        at += spec.n_outputs
    return out


def fit_feature_reference(pre: Preprocessor, z: np.ndarray) -> list[FeatureDistribution]:
    """The reference of every feature of ``pre`` from its training rows ``z`` (``transform(clip=False)``)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != pre.n_outputs or z.shape[0] < 2:
        raise ValueError(f"expected training rows (n >= 2, {pre.n_outputs}), got {z.shape}")
    offsets, n = _offsets(pre), int(z.shape[0])
    refs = []
    for spec in pre.features:
        at = offsets[spec.name]
        if spec.kind == "numeric":
            refs.append(_numeric(spec.name, z[:, at], n))
        else:
            block = z[:, at : at + spec.n_outputs]
            share = (block > 0.5).mean(axis=0)
            refs.append(
                FeatureDistribution(name=spec.name, kind="categorical", proportions=share.tolist(), n=n)
            )
    return refs


class FeatureBinner:
    """Bins of a batch of rows, all features at once: one comparison tensor for the numeric features,
    one matrix product for the categorical ones (no per-feature Python loop on the request path).

    ``layout``: per feature, in order, its name, kind, first column and width (1 for numeric, the
    categories for a one-hot block) in the rows :meth:`bin` receives (after :meth:`rows`)."""

    def __init__(
        self,
        layout: Sequence[tuple[str, str, int, int]],
        refs: list[FeatureDistribution],
        rows: Callable[[np.ndarray], np.ndarray] = np.asarray,
    ) -> None:
        #: the rows of a model input batch (``Encoded.z``) that are binned: tabular, the input itself
        self.rows = rows
        by_name = {r.name: r for r in refs}
        if [name for name, *_ in layout] != [r.name for r in refs]:
            raise ValueError(
                f"the feature reference names {[r.name for r in refs]} do not match the input schema's "
                f"{[name for name, *_ in layout]}"
            )
        offsets = {name: at for name, _, at, _ in layout}
        self.names = [name for name, *_ in layout]
        self.kinds = [kind for _, kind, _, _ in layout]
        num = [i for i, kind in enumerate(self.kinds) if kind == "numeric"]
        cat = [i for i, kind in enumerate(self.kinds) if kind != "numeric"]
        self.numeric_idx = np.asarray(num, dtype=np.int64)
        self.categorical_idx = np.asarray(cat, dtype=np.int64)
        self.numeric_cols = np.asarray([offsets[self.names[i]] for i in num], dtype=np.int64)
        qs = [by_name[self.names[i]].quantiles or [] for i in num]
        if qs and len({len(q) for q in qs}) != 1:
            raise ValueError("numeric feature references must have the same number of quantiles")
        self.quantiles = np.asarray(qs, dtype=np.float64).reshape(len(num), -1)  # (Fn, n)
        cdfs = [by_name[self.names[i]].cdf or [] for i in num]
        self.cdf = np.asarray(cdfs, dtype=np.float64).reshape(self.quantiles.shape)  # training F at each q
        #: categorical: a (width, Fc) matrix of category index + 1 at each one-hot column
        width = max((at + w for _, _, at, w in layout), default=0)
        self.codes = np.zeros((width, len(cat)), dtype=np.float64)
        self.n_categories = []
        for j, i in enumerate(cat):
            _, _, at, k = layout[i]
            self.codes[at : at + k, j] = np.arange(1, k + 1)
            self.n_categories.append(k)
        self.onehot_cols = np.flatnonzero(self.codes.any(axis=1))
        #: bins per feature: numeric n + 1; categorical its categories + 1 (unseen)
        self.bins = np.zeros(len(self.names), dtype=np.int64)
        self.bins[self.numeric_idx] = self.quantiles.shape[1] + 1
        self.bins[self.categorical_idx] = np.asarray(self.n_categories, dtype=np.int64) + 1
        self.reference = [by_name[n] for n in self.names]

    @classmethod
    def tabular(cls, pre: Preprocessor, refs: list[FeatureDistribution]) -> FeatureBinner:
        offsets = _offsets(pre)
        return cls([(s.name, s.kind, offsets[s.name], s.n_outputs) for s in pre.features], refs)

    @classmethod
    def sequence(cls, pre: Preprocessor, refs: list[FeatureDistribution]) -> FeatureBinner:
        offsets = _offsets(pre)
        layout = [(s.name, s.kind, offsets[s.name], s.n_outputs) for s in pre.features]
        return cls(layout, refs, rows=latest_hour)

    @classmethod
    def text(cls, refs: list[FeatureDistribution]) -> FeatureBinner:
        return cls(
            [(name, "numeric", j, 1) for j, name in enumerate(TEXT_FEATURES)], refs, rows=text_features
        )

    def bin(self, z: np.ndarray) -> np.ndarray:
        """(b, F) int64 bins of a batch (``Encoded.z``); NaN (never produced by the preprocessor) lands
        in the top bin of a numeric feature."""
        z = np.asarray(self.rows(z), dtype=np.float64)
        z = z.reshape(z.shape[0], -1)
        out = np.zeros((z.shape[0], len(self.names)), dtype=np.int64)
        if self.numeric_idx.size:
            values = z[:, self.numeric_cols]
            below = (self.quantiles[None, :, :] < values[:, :, None]).sum(axis=2)
            below[np.isnan(values)] = self.quantiles.shape[1]
            out[:, self.numeric_idx] = below
        if self.categorical_idx.size:
            # the one-hot columns only: a numeric column may hold inf (unclipped), and inf * 0 is NaN
            onehot = z[:, self.onehot_cols] @ self.codes[self.onehot_cols]
            code = np.rint(onehot).astype(np.int64)  # 0: no category set (one training never saw)
            unseen = np.asarray(self.n_categories, dtype=np.int64)[None, :]
            out[:, self.categorical_idx] = np.where(code > 0, code - 1, unseen)
        return out
