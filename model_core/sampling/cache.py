"""Memory layout of S factor draws (the ``cached`` backend, and any caller applying draws many times).

:func:`pack_factor_samples` stores S draws so that applying them needs two GEMM calls and no copies:

* B: one (n, S·r) buffer, so ``x B_s`` for every s is a single (N, n) × (n, S·r) GEMM when x is shared;
* A and the bias: one (S, r+1, m) buffer holding [A_sᵀ; b_s], so y_s = [h_s, 1] [A_sᵀ; b_s] is one
  batched GEMM with the bias folded in (no separate pass over the S×N×m output).

The returned :class:`FactorSamples` holds ordinary views of those buffers with the usual shapes
(a: (S, m, r), b: (S, n, r), bias: (S, 1, m)), so code that only knows the dataclass keeps working; the
fast paths recognise the layout from the strides (:func:`packed_a_t`, :func:`packed_b_flat`) and return
``None`` for any other layout (e.g. draws loaded from disk), where callers use the generic path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model_core.sampling.types import FactorSamples


def pack_factor_samples(a: Tensor, b: Tensor, bias: Tensor | None) -> FactorSamples:
    """The same draws (a: (S, m, r), b: (S, n, r), bias: (S, 1, m) or None) in the packed layout."""
    s, m, r = a.shape
    n = int(b.shape[1])
    extra = 0 if bias is None else 1
    at_buf = a.new_empty((s, r + extra, m))
    at_buf[:, :r].copy_(a.transpose(1, 2))
    if bias is not None:
        at_buf[:, r:].copy_(bias.expand(s, 1, m))
    b_buf = b.new_empty((n, s, r))
    b_buf.copy_(b.permute(1, 0, 2))
    packed_bias = None if bias is None else at_buf[:, r:]
    return FactorSamples(at_buf[:, :r].transpose(1, 2), b_buf.permute(1, 0, 2), packed_bias)


def packed_a_t(draws: FactorSamples, samples: int) -> Tensor | None:
    """[A_sᵀ; b_s] as one (samples, r+1, m) view (or (samples, r, m) without bias), if packed; else None."""
    a = draws.a
    s_all, m, r = a.shape
    extra = 0 if draws.bias is None else 1
    step = (r + extra) * m
    a_t = a.transpose(1, 2)
    if (s_all > 1 and a_t.stride(0) != step) or a_t.stride(1) != m or a_t.stride(2) != 1:
        return None
    if draws.bias is not None:
        bias = draws.bias
        if bias.dtype != a.dtype or bias.device != a.device:
            return None
        if bias.untyped_storage().data_ptr() != a.untyped_storage().data_ptr():
            return None
        if bias.storage_offset() != a.storage_offset() + r * m or bias.stride(2) != 1:
            return None
        if s_all > 1 and bias.stride(0) != step:
            return None
    return torch.as_strided(a, (samples, r + extra, m), (step, m, 1))


def packed_b_flat(draws: FactorSamples, samples: int) -> Tensor | None:
    """B as an (n, samples·r) matrix (column block s = B_s), if packed; else None."""
    b_nsr = draws.b.permute(1, 0, 2)  # (n, S, r)
    if not b_nsr.is_contiguous():
        return None
    n, s_all, r = b_nsr.shape
    if samples == s_all:
        return b_nsr.reshape(n, s_all * r)
    return b_nsr[:, :samples].reshape(n, samples * r)  # copies n·samples·r values


__all__ = ["pack_factor_samples", "packed_a_t", "packed_b_flat"]
