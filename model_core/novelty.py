"""Input novelty: how far an input lies from the training inputs, as a shrinkage Mahalanobis distance.

Why a second OOD detector beside the epistemic score: the mutual information of a small network is a
weak detector of input-space shift (a patient sent with temperature in °F gets a confident answer), and
the preprocessing clips gross outliers before the network sees them. The novelty score looks at the
*unclipped* preprocessed input instead (:meth:`Preprocessor.transform` with ``clip=False``), through
one feature map per input kind (a registry):

* ``inputs`` (tabular): the scaled input vector itself;
* ``window_summary`` (sequences): per input, its mean, standard deviation, minimum and maximum over the
  window (a stuck sensor has no spread, a spike a far maximum, a unit change a shifted mean);
* ``token_embedding`` (text): the mean over a text's tokens of the model's mean token embedding,
  projected on its top principal directions: a representation-space distance.

On the features, a Gaussian with the Ledoit-Wolf shrinkage covariance of the training split
(scikit-learn's ``LedoitWolf``; the sample covariance of 30-60 correlated, partly constant columns is
singular). Chosen on the ICU splits against kNN distance, class-conditional densities in input and in the
network's last hidden layer (DDU-style) and IsolationForest: within ~0.02 AUROC of the best of them
(``docs/results.md``), one matrix product per request and nothing fitted at serving time.

Tabular inputs add a **per-feature tail score** (:class:`TailScore`): how far each numeric value lies
from the training median, in units of the training 0.5 % / 99.5 % quantile's distance on that side, on
a log axis (a unit error is a factor, which the log turns into the same shift at any value). A
Mahalanobis distance spreads one feature's shift over all the dimensions and weighs it by the variance,
not by the tail: glucose sent in mmol/L (7.5 for 135 mg/dL) lies inside the training range of a
min-max scaled input and moves the distance little, while it is below the 0.2 % quantile of every
training patient. The novelty score is then the sum of the two, each divided by its own training 99th
percentile (``refs``): either can fire alone, and two moderate ones add up. Chosen by validation only
against the distance alone, the tail score alone, their maximum, their Euclidean norm and weighted sums
(``benchmarks/novelty_choice.py``, ``docs/model.md``): on the mean of two validation criteria, unit
errors detected and a disease class held out of the fit, on three seeds. The detector's arrays travel as
``novelty.safetensors`` beside the weights, its sha256 in the manifest.

The serving path needs only numpy: fitting (scikit-learn, torch for the text table) imports lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model_core.layers.base import BayesianModule

__all__ = [
    "NOVELTY_FILE",
    "NoveltyDetector",
    "NoveltyFeatures",
    "TailScore",
    "fit_novelty",
    "novelty_features",
]

NOVELTY_FILE = "novelty.safetensors"
#: Unclipped inputs are capped at this magnitude before the distance: a value 1e300 (a finite double a
#: client may send) must give a large, finite score, not inf - inf = NaN in the quadratic form.
INPUT_CAP = 1e6
#: Text: principal directions of the mean token-embedding table kept (the low-rank models' r = 16).
TEXT_COMPONENTS = 16
#: Tail score: a side's unit is the distance from the median to this training quantile (0.5 %, 99.5 %).
TAIL_LEVEL = 0.005
#: A side's unit is at least this fraction of the two sides' sum: a zero-inflated feature (the coma score
#: is 0 for most patients) has no lower tail, and a zero unit would make any value below it infinite.
TAIL_FLOOR = 0.05
#: Each component is divided by its own training quantile at this level before the two are compared.
REF_LEVEL = 0.99
#: The tail score's axis: log(z + offset) of the scaled value z (the training split spans [0, 1]),
#: continued linearly below 0 with the same slope, so that a value under the training minimum still
#: grows without bound. 1 % of the training range: chosen by validation against 3 % and 10 %.
TAIL_OFFSET = 0.01
#: names of the tail component's arrays in ``novelty.safetensors``
TAIL_KEYS = ("tail_columns", "tail_center", "tail_upper", "tail_lower", "tail_offset", "refs")


class NoveltyFeatures(str, Enum):
    INPUTS = "inputs"
    WINDOW_SUMMARY = "window_summary"
    TOKEN_EMBEDDING = "token_embedding"


def _inputs(x: np.ndarray, _: dict[str, np.ndarray], __: dict[str, Any]) -> np.ndarray:
    f = np.array(x, dtype=np.float64).reshape(len(x), -1)  # a copy: clipped in place
    return np.clip(f, -INPUT_CAP, INPUT_CAP, out=f)


def _window_summary(x: np.ndarray, _: dict[str, np.ndarray], __: dict[str, Any]) -> np.ndarray:
    w = np.clip(np.asarray(x, dtype=np.float64), -INPUT_CAP, INPUT_CAP)  # (n, window, width)
    if w.ndim != 3:
        raise ValueError(f"window_summary needs (n, window, width) inputs, got shape {w.shape}")
    return np.concatenate([w.mean(1), w.std(1), w.min(1), w.max(1)], axis=1)


def _token_embedding(ids: np.ndarray, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> np.ndarray:
    table = arrays["embedding"]  # (vocab, k)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"token_embedding needs (n, length) token ids, got shape {ids.shape}")
    mask = ids != int(meta.get("pad_id", 0))
    safe = np.where((ids >= 0) & (ids < len(table)), ids, 0)
    summed = (table[safe] * mask[..., None]).sum(1, dtype=np.float64)
    return summed / np.maximum(mask.sum(1, keepdims=True), 1)


#: feature kind -> map from the (unclipped) model input to the detector's feature vectors
FEATURE_MAPS: dict[NoveltyFeatures, Callable[[np.ndarray, dict[str, np.ndarray], dict[str, Any]], np.ndarray]]
FEATURE_MAPS = {
    NoveltyFeatures.INPUTS: _inputs,
    NoveltyFeatures.WINDOW_SUMMARY: _window_summary,
    NoveltyFeatures.TOKEN_EMBEDDING: _token_embedding,
}
#: ``input_schema.kind`` -> the feature map fitted for it
KIND_FEATURES = {
    "tabular": NoveltyFeatures.INPUTS,
    "sequence": NoveltyFeatures.WINDOW_SUMMARY,
    "text": NoveltyFeatures.TOKEN_EMBEDDING,
}


def novelty_features(
    kind: NoveltyFeatures, x: np.ndarray, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> np.ndarray:
    return FEATURE_MAPS[NoveltyFeatures(kind)](x, arrays, meta)


def _tail_axis(z: np.ndarray, offset: float) -> np.ndarray:
    """log(z + offset) for z >= 0, log(offset) + z / offset below: monotone, C¹, one formula without
    a branch (the second term is 0 for z >= 0, the first log(offset) for z < 0)."""
    out = np.maximum(z, 0.0)
    out += offset
    np.log(out, out=out)
    out += np.minimum(z, 0.0) / offset
    return out


@dataclass(frozen=True)
class TailScore:
    """max_j of the distance of feature ``columns[j]`` from ``center[j]`` on the :meth:`axis`, in units of
    ``upper[j]`` above it and ``lower[j]`` below it (the training median and quantile distances, see
    :data:`TAIL_LEVEL`)."""

    columns: np.ndarray  # (k,) int64 indices into the feature vector
    center: np.ndarray  # (k,)
    upper: np.ndarray  # (k,) > 0
    lower: np.ndarray  # (k,) > 0
    offset: float = TAIL_OFFSET
    #: both sides' reciprocal units as one (2k,) array, which the axis values taken twice (``_twice``)
    #: meet in one product: one max per row instead of two divisions and two maxima
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _twice: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_weights", np.concatenate([1.0 / self.upper, -1.0 / self.lower]))
        object.__setattr__(self, "_twice", np.tile(np.arange(len(self.center)), 2))

    def axis(self, f: np.ndarray) -> np.ndarray:
        """The tail columns of ``f`` on the log axis (see :data:`TAIL_OFFSET`)."""
        return _tail_axis(f.take(self.columns, axis=1), self.offset)

    @classmethod
    def fit(cls, f: np.ndarray, columns: np.ndarray, offset: float = TAIL_OFFSET) -> TailScore:
        t = _tail_axis(f.take(columns, axis=1), offset)
        center = np.median(t, axis=0)
        upper = np.quantile(t, 1.0 - TAIL_LEVEL, axis=0) - center
        lower = center - np.quantile(t, TAIL_LEVEL, axis=0)
        floor = np.maximum(TAIL_FLOOR * (upper + lower), 1e-6)
        return cls(columns, center, np.maximum(upper, floor), np.maximum(lower, floor), offset)

    def score(self, f: np.ndarray) -> np.ndarray:
        """(n,) tail scores: max over columns and sides of the axis distance from the centre in that
        side's units (0 columns: -inf, nothing is in a tail)."""
        t = self.axis(f)
        t -= self.center
        both = t.take(self._twice, axis=1)
        both *= self._weights
        return both.max(axis=1, initial=-np.inf)

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "tail_columns": self.columns.astype(np.int64),
            "tail_center": self.center.astype(np.float64),
            "tail_upper": self.upper.astype(np.float64),
            "tail_lower": self.lower.astype(np.float64),
            "tail_offset": np.array([self.offset], dtype=np.float64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], dim: int) -> TailScore:
        columns = tensors["tail_columns"]
        parts = [tensors[k] for k in ("tail_center", "tail_upper", "tail_lower")]
        k = columns.shape[0] if columns.ndim == 1 else -1
        if k < 1 or any(p.shape != (k,) for p in parts):
            raise ValueError(f"novelty tail arrays do not have one value per tail column ({columns.shape})")
        if columns.dtype.kind not in "iu" or columns.min() < 0 or columns.max() >= dim:
            raise ValueError(f"novelty tail columns must be integer indices in [0, {dim})")
        if not all((p > 0).all() for p in parts[1:]):
            raise ValueError("novelty tail units must be positive")
        offset = tensors["tail_offset"]
        if offset.shape != (1,) or not offset[0] > 0:
            raise ValueError(f"novelty tail offset must be one positive number, got {offset.tolist()}")
        center, upper, lower = parts
        return cls(columns.astype(np.int64), center, upper, lower, float(offset[0]))


@dataclass(frozen=True)
class NoveltyDetector:
    """Mahalanobis distance sqrt((f - loc)ᵀ P (f - loc)) of the feature map of an input; with a
    :class:`TailScore`, distance / refs[0] + tail / refs[1]."""

    features: NoveltyFeatures
    loc: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d)
    #: extra arrays of the feature map (``embedding`` for text)
    extra: dict[str, np.ndarray]
    #: scalars of the feature map (``pad_id`` for text)
    meta: dict[str, Any]
    tail: TailScore | None = None
    #: (2,) the training REF_LEVEL quantiles of the distance and of the tail score (with ``tail``)
    refs: np.ndarray | None = None
    #: the served form, derived once: the precision over refs[0]², the tail's units times refs[1]
    #: (so each component comes out already divided by its ref: two operations fewer per request)
    _served: tuple[np.ndarray, TailScore] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tail is not None and self.refs is not None:
            r0, r1 = float(self.refs[0]), float(self.refs[1])
            tail = replace(self.tail, upper=self.tail.upper * r1, lower=self.tail.lower * r1)
            object.__setattr__(self, "_served", (self.precision / (r0 * r0), tail))

    @property
    def dim(self) -> int:
        return int(self.loc.shape[0])

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) float64 novelty scores of ``n`` (unclipped) model inputs; O(n·d²)."""
        f = novelty_features(self.features, x, self.extra, self.meta)
        if self._served is None:
            return self._distance(f)
        precision, tail = self._served
        return self._distance(f, precision) + tail.score(f)

    def _distance(self, f: np.ndarray, precision: np.ndarray | None = None) -> np.ndarray:
        diff = f - self.loc
        quad = ((diff @ (self.precision if precision is None else precision)) * diff).sum(axis=1)
        np.maximum(quad, 0.0, out=quad)
        return np.sqrt(quad, out=quad)

    # -- persistence --------------------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        out = {"loc": self.loc.astype(np.float64), "precision": self.precision.astype(np.float64)}
        out.update({k: np.ascontiguousarray(v) for k, v in self.extra.items()})
        if self.tail is not None and self.refs is not None:
            out.update(self.tail.tensors())
            out["refs"] = self.refs.astype(np.float64)
        return out

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(directory) / NOVELTY_FILE
        tmp = path.with_suffix(".tmp")
        save_file(self.tensors(), str(tmp), metadata={"features": self.features.value})
        tmp.replace(path)
        return path

    @classmethod
    def from_tensors(
        cls, features: NoveltyFeatures, tensors: dict[str, np.ndarray], meta: dict[str, Any]
    ) -> NoveltyDetector:
        """Rebuild from the file's arrays, checking shapes and finiteness (a tampered file is refused)."""
        try:
            loc, precision = tensors["loc"], tensors["precision"]
        except KeyError as exc:
            raise ValueError(f"novelty tensors lack {exc.args[0]!r}") from None
        d = loc.shape[0] if loc.ndim == 1 else -1
        if d < 1 or precision.shape != (d, d):
            raise ValueError(f"novelty loc {loc.shape} and precision {precision.shape} do not match")
        extra = {k: v for k, v in tensors.items() if k not in ("loc", "precision", *TAIL_KEYS)}
        if NoveltyFeatures(features) is NoveltyFeatures.TOKEN_EMBEDDING:
            table = extra.get("embedding")
            if table is None or table.ndim != 2 or table.shape[1] != d:
                raise ValueError(f"token_embedding novelty needs an (vocab, {d}) embedding table")
        bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"non-finite values in novelty tensors {bad}")
        present = [k for k in TAIL_KEYS if k in tensors]
        tail, refs = None, None
        if present:
            if len(present) != len(TAIL_KEYS):
                missing = sorted(set(TAIL_KEYS) - set(present))
                raise ValueError(f"novelty tail component is incomplete: missing {missing}")
            tail = TailScore.from_tensors(tensors, d)
            refs = tensors["refs"]
            if refs.shape != (2,) or not (refs > 0).all():
                raise ValueError(f"novelty refs must be two positive numbers, got {refs.tolist()}")
        return cls(NoveltyFeatures(features), loc, precision, extra, dict(meta), tail, refs)


def _text_table(model: BayesianModule, components: int = TEXT_COMPONENTS) -> np.ndarray:
    """The model's mean token-embedding table projected on its top principal directions (vocab, k).

    An ensemble has one table per member; its first member's is used: the detector needs one fixed map
    from token ids to vectors in which training texts cluster, and any member's embedding gives one.
    """
    import torch

    from model_core.layers.base import BayesianModule, Mode

    members = getattr(model, "members", None)
    holder = members[0] if members is not None and not hasattr(model, "embed") else model
    embed = holder.embed
    if not isinstance(embed, BayesianModule):
        raise TypeError(f"{type(model).__name__}.embed is not a Bayesian embedding")
    vocab = int(model.spec.extra["vocab_size"])  # type: ignore[union-attr, index]
    previous = embed.mode
    embed.set_mode(Mode.MEAN)
    try:
        with torch.inference_mode():
            table = embed(torch.arange(vocab).unsqueeze(0))[0].double().cpu().numpy()
    finally:
        embed.set_mode(previous)
    centred = table - table.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (table @ vt[:components].T).astype(np.float32)


def fit_novelty(
    input_kind: str,
    x_train: np.ndarray,
    model: BayesianModule | None = None,
    pad_id: int = 0,
    tail_columns: np.ndarray | None = None,
) -> NoveltyDetector:
    """Fit the detector of ``input_kind`` on the training split's (unclipped) inputs; ``tail_columns``
    (feature-vector indices, the numeric inputs of a tabular model) adds the :class:`TailScore`."""
    from sklearn.covariance import LedoitWolf

    features = KIND_FEATURES[input_kind]
    extra: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    if features is NoveltyFeatures.TOKEN_EMBEDDING:
        if model is None:
            raise ValueError("a text novelty detector needs the model (its token embedding)")
        extra["embedding"] = _text_table(model)
        meta["pad_id"] = pad_id
    f = novelty_features(features, x_train, extra, meta)
    lw = LedoitWolf().fit(f)
    loc, precision = lw.location_.astype(np.float64), lw.precision_.astype(np.float64)
    plain = NoveltyDetector(features, loc, precision, extra, meta)
    if tail_columns is None or len(tail_columns) == 0:
        return plain
    tail = TailScore.fit(f, np.asarray(tail_columns, dtype=np.int64))
    refs = np.quantile(np.stack([plain.score(x_train), tail.score(f)]), REF_LEVEL, axis=1)
    return NoveltyDetector(features, loc, precision, extra, meta, tail, np.maximum(refs, 1e-12))
