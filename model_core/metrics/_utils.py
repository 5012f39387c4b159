"""Input conversion shared by the metric modules.

Metrics are computed in float64 numpy so that results do not depend on the device or dtype a model
happened to run in; torch is only touched through duck typing so importing this package never
imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    ArrayInput: TypeAlias = npt.ArrayLike | torch.Tensor
else:
    ArrayInput: TypeAlias = Any

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]


def to_numpy(x: ArrayInput) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to CPU first.

    bfloat16 has no numpy equivalent, so such tensors are upcast to float32 before conversion.
    """
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        try:
            return np.asarray(t.numpy())
        except TypeError:  # bfloat16 and other dtypes numpy does not know
            return np.asarray(t.float().numpy())
    return np.asarray(x)


def as_float_1d(x: ArrayInput, name: str) -> FloatArray:
    """Convert to a non-empty, finite 1-D float64 array.

    Fails loudly on (N, 1) inputs, which would otherwise broadcast against (N,) into an (N, N) matrix
    and silently give a wrong number, and on NaN/inf, which would poison every mean.
    """
    arr = to_numpy(x).astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def as_labels(x: ArrayInput, n: int, n_classes: int) -> IntArray:
    """Convert to 1-D int64 labels in ``[0, n_classes)``; float labels are accepted only if integral."""
    raw = to_numpy(x)
    if raw.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {raw.shape}")
    if raw.shape[0] != n:
        raise ValueError(f"labels has {raw.shape[0]} entries but probs has {n}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise ValueError("labels must be integers")
    elif raw.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels


def check_same_length(**arrays: np.ndarray) -> None:
    """Raise if the named 1-D arrays do not all have the same length."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
