"""Exact PyTorch sampling schemes (CPU or CUDA eager).

Shapes: ``x`` is (N, n) when every sample sees the same input (the first layer) or (S, N, n) when each
sample has its own activations (later layers); every scheme returns (S, N, m). Every scheme is exact:
the one-stage moment-matched shortcut (a single Gaussian for y given x) is deliberately absent because it
loses the output correlations and tails that the product of two Gaussian factors has.

Speed (see ``docs/performance.md``): on the CPU these schemes are bound by drawing normals (torch's CPU
``normal_`` is single-threaded, ~2.4 ns per normal here) and by writing the S×N×m output, so

* the bias is folded into the last GEMM as an extra row of A_sᵀ (y_s = [h_s, 1] [A_sᵀ; b_s]), so the
  output is written once;
* ``factored`` draws B in an (n, S·r) layout so that x B_s for all s is one GEMM, not S small ones, and
  the ``cached`` draws are stored the same way (``cache.py``);
* noise from a plain :class:`NoiseSource` is fresh, so it is turned into the factor draw in place.

Noise is always drawn through the :class:`NoiseSource` methods (the ONNX exporter substitutes its own).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model_core.sampling.cache import pack_factor_samples, packed_a_t, packed_b_flat
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import FactorPosterior, FactorSamples


def rowwise(noise: NoiseSource) -> bool:
    """Take the batch-invariant row-wise passes: per-request noise (``NoiseSource.from_seeds``, the
    serving path) drawn by the base-class methods (not an exporter's substitute). Other callers
    (evaluation, the sampling benchmark) keep the one-GEMM passes, which are faster at large N."""
    return _plain(noise) and noise.rowwise


def _plain(noise: NoiseSource) -> bool:
    """Noise drawn by the base-class methods, i.e. fresh tensors this module may overwrite in place."""
    cls = type(noise)
    return cls.per_row is NoiseSource.per_row and cls.shared is NoiseSource.shared


def _shared(noise: NoiseSource, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, bool]:
    """Row-shared noise, and whether it is a fresh tensor that may be overwritten."""
    return noise.shared(*shape, dtype=dtype), _plain(noise)


def _affine(mu: Tensor, sigma: Tensor, eps: Tensor, fresh: bool) -> Tensor:
    """mu + sigma ⊙ eps, written over ``eps`` when it is fresh noise and no gradient is being recorded."""
    if fresh and not (torch.is_grad_enabled() and (mu.requires_grad or sigma.requires_grad)):
        return torch.addcmul(mu, sigma, eps, out=eps)
    return torch.addcmul(mu, sigma, eps)


def _draw(mu: Tensor, sigma: Tensor, noise: NoiseSource, samples: int) -> Tensor:
    eps = noise.shared(samples, *mu.shape, dtype=mu.dtype)
    return torch.addcmul(mu, sigma, eps)


def _shared_bias(post: FactorPosterior, noise: NoiseSource, samples: int) -> Tensor | None:
    if post.bias_mu is None:
        return None
    if post.bias_sigma is None:
        return post.bias_mu.expand(samples, 1, -1)
    return _draw(post.bias_mu.view(1, -1), post.bias_sigma.view(1, -1), noise, samples)


def materialize(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Draw W_s = A_s B_sᵀ explicitly: S·m·n memory, the slow reference."""
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    b = _draw(post.mu_b, post.sigma_b, noise, samples)
    bias = _shared_bias(post, noise, samples)
    w = torch.bmm(a, b.transpose(1, 2))  # (S, m, n)
    y = torch.matmul(x, w.transpose(1, 2))
    return y if bias is None else y + bias


def _sampled_a_t(post: FactorPosterior, samples: int, noise: NoiseSource, dtype: torch.dtype) -> Tensor:
    """S draws of [A_sᵀ; b_s]: (S, r+1, m) with the bias as the last row, or (S, r, m) without a bias."""
    mu, sigma = post.mu_a.T, post.sigma_a.T
    if post.bias_mu is not None:
        bias_mu = post.bias_mu.view(1, -1)
        bias_sigma = torch.zeros_like(bias_mu) if post.bias_sigma is None else post.bias_sigma.view(1, -1)
        mu, sigma = torch.cat([mu, bias_mu]), torch.cat([sigma, bias_sigma])
    eps, fresh = _shared(noise, (samples, *mu.shape), dtype)
    return _affine(mu, sigma, eps, fresh)


def _times_a_t(h: Tensor, a_t: Tensor) -> Tensor:
    """y_s = [h_s, 1] a_t_s for (S, N, r) h and a_t (S, r+1, m) (bias row) or (S, r, m)."""
    s, n_rows, r = h.shape
    if a_t.shape[1] == r:
        return torch.bmm(h, a_t)
    hh = h.new_empty((s, n_rows, r + 1))
    hh[..., :r].copy_(h)
    hh[..., r].fill_(1.0)
    return torch.bmm(hh, a_t)


def factored(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """(x B_s) A_sᵀ: two batched GEMMs through the rank-r bottleneck, S·r·(m+n) normals."""
    n, r = post.in_features, post.rank
    if x.dim() == 2:  # B drawn as (n, S, r): x B_s for every s is one (N, n) x (n, S·r) GEMM
        eps, fresh = _shared(noise, (n, samples, r), x.dtype)
        mu_b, sigma_b = post.mu_b.unsqueeze(1), post.sigma_b.unsqueeze(1)
        b = _affine(mu_b, sigma_b, eps, fresh)
        h = (x @ b.view(n, samples * r)).view(-1, samples, r).transpose(0, 1)
    else:
        eps, fresh = _shared(noise, (samples, n, r), x.dtype)
        b = _affine(post.mu_b, post.sigma_b, eps, fresh)
        h = torch.bmm(x, b)
    return _times_a_t(h, _sampled_a_t(post, samples, noise, x.dtype))


def apply_factors(x: Tensor, draws: FactorSamples, samples: int | None = None) -> Tensor:
    """y_s = (x B_s) A_sᵀ + b_s for given factor draws (the first ``samples`` of them)."""
    s = draws.samples if samples is None else samples
    a_t = packed_a_t(draws, s)
    if a_t is not None:  # the layout of pack_factor_samples: no copies of the draws, bias in the GEMM
        b_flat = packed_b_flat(draws, s) if x.dim() == 2 else None
        if b_flat is not None:
            h = (x @ b_flat).view(-1, s, draws.a.shape[2]).transpose(0, 1)
        else:
            h = torch.matmul(x, draws.b[:s])
        return _times_a_t(h, a_t)
    a, b = draws.a[:s], draws.b[:s]
    h = torch.matmul(x, b)  # (N, n) @ (S, n, r) broadcasts to (S, N, r)
    if draws.bias is None:
        return torch.bmm(h, a.transpose(1, 2))
    return torch.baddbmm(draws.bias[:s], h, a.transpose(1, 2))


def _first_stage(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """h = x B exactly: Gaussian per example with mean x μ_B and variance x² σ_B² (computed once)."""
    mu_h = torch.matmul(x, post.mu_b)
    std_h = torch.matmul(x * x, post.sigma_b * post.sigma_b).sqrt_()
    eps = noise.per_row(samples, post.rank, dtype=x.dtype)
    return torch.addcmul(mu_h, std_h, eps)  # broadcasts (N, r) to (S, N, r) when x is shared


def lrt(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Two-stage local reparameterisation: S·N·(r+m) normals, exact per example.

    Given h, the outputs y_j = Σ_k h_k A_jk + b_j are independent Gaussians (rows of A are independent),
    so y is drawn exactly with mean h μ_Aᵀ + μ_b and variance h² σ_A²ᵀ + σ_b².

    With per-request noise and no gradient (serving) the pass is batch invariant bit for bit, see
    :func:`_lrt_rows`.
    """
    if rowwise(noise) and not _needs_grad(post):
        return _lrt_rows(x, post, samples, noise)
    h = _first_stage(x, post, samples, noise)
    s, n_rows, r = h.shape
    h2 = h.reshape(s * n_rows, r)
    m = post.out_features
    var_a = (post.sigma_a * post.sigma_a).T
    if _plain(noise) and not _needs_grad(post):
        # two S·N·m buffers instead of four: std in one, then eps ⊙ std + [h, 1] [μ_Aᵀ; μ_b] in the noise
        h_mu, a_mu = _with_bias_row(h2, post.mu_a.T, post.bias_mu)
        bias_var = None if post.bias_sigma is None else post.bias_sigma * post.bias_sigma
        h_var, a_var = _with_bias_row(h2 * h2, var_a, bias_var)
        std = (h_var @ a_var).sqrt_()
        eps = noise.per_row(samples, m, dtype=x.dtype).reshape(s * n_rows, m)
        return eps.mul_(std).addmm_(h_mu, a_mu).view(s, n_rows, m)
    mu_y = h2 @ post.mu_a.T if post.bias_mu is None else torch.addmm(post.bias_mu, h2, post.mu_a.T)
    if post.bias_sigma is None:
        var_y = (h2 * h2) @ var_a
    else:
        var_y = torch.addmm(post.bias_sigma * post.bias_sigma, h2 * h2, var_a)
    eps = noise.per_row(samples, m, dtype=x.dtype).reshape(s * n_rows, m)
    return mu_y.addcmul_(var_y.sqrt_(), eps).view(s, n_rows, m)  # mu_y is ours: write the output there


# -- batch-invariant row-wise passes ---------------------------------------------------------------
#
# A GEMM over all S·N (sample, row) pairs lets BLAS pick its kernel by the matrix height, so a row's
# outputs round differently with the batch's size. Here every matrix product is a batched GEMM with the
# row as the batch dimension (``torch.bmm`` hands MKL one (S, k) x (k, m) problem per row, the same shape
# whatever N is), every row's operand starts on a 64-byte boundary (BLAS kernels may peel by
# alignment), and every elementwise op is IEEE-exact (+, −, ×, √, max): those round the same in the
# vectorised and scalar loops and whatever the thread split, unlike ``addcmul`` or transcendental ops.
# Activations are kept rows-outer in memory, (N, S, m), and returned as (S, N, m) views, so the next
# layer reads them without a copy. Verified in ``tests/model_core/sampling/test_batch_invariance.py``.

_ALIGN = 16  # floats per 64 bytes


def _aligned_rows(n_rows: int, rows: int, cols: int, like: Tensor) -> Tensor:
    """An uninitialised (N, R, m) tensor, dense within a row, whose rows start on 64-byte boundaries."""
    row = -(-(rows * cols) // _ALIGN) * _ALIGN
    return torch.empty_strided((n_rows, rows, cols), (row, cols, 1), dtype=like.dtype, device=like.device)


def rows_first(x: Tensor) -> Tensor:
    """(S, N, n) as rows-outer (N, S, n) with 64-byte aligned rows: a view when it already is one."""
    xr = x.transpose(0, 1)
    if xr.is_contiguous() and (xr.shape[1] * xr.shape[2]) % _ALIGN == 0 and xr.data_ptr() % 64 == 0:
        return xr
    out = _aligned_rows(xr.shape[0], xr.shape[1], xr.shape[2], x)
    return out.copy_(xr)


def shared_matmul(x: Tensor, w_t: Tensor) -> Tensor:
    """(N, n) x (n, m) for a shared input given ``w_t`` = (m, n): (N, 1, m), each output a sum over n.

    Not a GEMM: MKL's batched GEMM treats many one-row problems differently from a single one, while
    torch's sum over a contiguous last axis adds each output's n terms in an order fixed by n alone.
    """
    return (x.unsqueeze(1) * w_t.unsqueeze(0)).sum(-1).unsqueeze(1)


def square_rows(x: Tensor) -> Tensor:
    """x ⊙ x for rows-outer (N, R, k) ``x``, into 64-byte aligned rows."""
    out = _aligned_rows(x.shape[0], x.shape[1], x.shape[2], x)
    return torch.mul(x, x, out=out)


def _gemm_out(n_rows: int, rows: int, cols: int, like: Tensor) -> Tensor:
    """An uninitialised (N, R, m) GEMM output whose rows start on 64-byte boundaries, with a gap after each.

    The gap keeps the tensor non-contiguous (for N > 1), which makes ``bmm``/``baddbmm_`` call one plain
    GEMM per row instead of MKL's batched GEMM, whose kernels for small problems change with the batch
    count; :func:`row_matmul` makes the very same call for N = 1.
    """
    row = -(-(rows * cols + 1) // _ALIGN) * _ALIGN
    return torch.empty_strided((n_rows, rows, cols), (row, cols, 1), dtype=like.dtype, device=like.device)


def row_matmul(h: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
    """(N, R, k) @ (k, m) as N independent (R, k) x (k, m) GEMMs; ``out`` += the product when given.

    Every row's product is the same computation whatever N is: torch's naive kernel for tiny problems
    (k·R·m < 400, chosen per problem), a sum over k for one-line problems, else one BLAS GEMM per row
    (``addmm``, which is what ``bmm`` runs per row for a non-contiguous output).
    """
    n_rows, rows, k = h.shape
    m = w.shape[1]
    if rows == 1:  # one-line problems: a sum over k per output (see shared_matmul)
        prod = shared_matmul(h[:, 0], w.T.contiguous())
        return prod if out is None else out.add_(prod)
    if out is None:
        out = _gemm_out(n_rows, rows, m, h)
        beta = 0.0
    else:
        if n_rows > 1 and out.is_contiguous():
            raise ValueError("row_matmul accumulates into a _gemm_out buffer only")
        beta = 1.0
    if n_rows == 1 and k * rows * m >= 400:
        out[0].addmm_(h[0], w, beta=beta)
    else:
        out.baddbmm_(h, w.expand(n_rows, k, m), beta=beta)
    return out


class RowConstants(NamedTuple):
    """Functions of a layer's posterior alone that the row-wise pass uses, with the rank padded to ``width``.

    The first-stage factors get zero columns up to ``width`` = r + 1 rounded up to a multiple of 16: MKL's
    small GEMMs are 2-3x faster with 16 output columns than with 15 (``docs/performance.md``), a zero
    column gives h = 0 + 0·ε there exactly, and column r then holds the 1 of [h, 1], so the second-stage
    factors [μ_Aᵀ; μ_b; 0] and [σ_A²ᵀ; σ_b²; 0] fold the bias into their GEMMs.
    """

    rank: int
    width: int
    w_t: Tensor  # [μ_Bᵀ; σ_B²ᵀ], (2, r, n): a shared input's moments are sums, not a GEMM, so unpadded
    mu_b: Tensor  # (n, width)
    var_b: Tensor  # (n, width)
    a_mu: Tensor  # (width, m)
    a_var: Tensor  # (width, m)
    tail: Tensor  # [1, 0, ...], (width - r,): the columns of [h, 1] after h


def padded_width(rank: int) -> int:
    """Columns of the row-wise first stage: r + 1 rounded up to a multiple of 16 (see RowConstants)."""
    return -(-(rank + 1) // 16) * 16


def row_constants(post: FactorPosterior) -> RowConstants:
    """The :class:`RowConstants` of ``post``, memoised in ``post.memo`` while its tensors are the same
    objects at the same in-place versions (a served layer: ~15 small ops saved per layer and request).
    The memo holds the tensors it was computed from, so their ids cannot be reused while it is kept."""
    parts = (post.mu_a, post.sigma_a, post.mu_b, post.sigma_b, post.bias_mu, post.bias_sigma)
    stamp = tuple((id(t), t._version) if t is not None else (0, 0) for t in parts)
    memo = post.memo
    if memo is not None and memo.get("stamp") == stamp:
        return memo["constants"]  # type: ignore[no-any-return]
    r, m, n = post.rank, post.out_features, post.in_features
    width = padded_width(r)
    mu_b = post.mu_b.new_zeros((n, width))
    mu_b[:, :r] = post.mu_b
    var_b = torch.zeros_like(mu_b)
    var_b[:, :r] = post.sigma_b * post.sigma_b
    a_mu = post.mu_a.new_zeros((width, m))
    a_mu[:r] = post.mu_a.T
    a_var = torch.zeros_like(a_mu)
    a_var[:r] = (post.sigma_a * post.sigma_a).T
    if post.bias_mu is not None:
        a_mu[r] = post.bias_mu
    if post.bias_sigma is not None:
        a_var[r] = post.bias_sigma * post.bias_sigma
    tail = mu_b.new_zeros(width - r)
    tail[0] = 1.0
    w_t = torch.stack([mu_b[:, :r].T, var_b[:, :r].T])
    constants = RowConstants(r, width, w_t, mu_b, var_b, a_mu, a_var, tail)
    if memo is not None:
        memo.update(stamp=stamp, parts=parts, constants=constants)
    return constants


def _lrt_rows(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    return lrt_rows(x, row_constants(post), samples, noise)


def lrt_rows(x: Tensor, c: RowConstants, samples: int, noise: NoiseSource) -> Tensor:
    """``lrt`` computed row by row with shapes that do not depend on N (see the notes above)."""
    r, m = c.rank, c.a_mu.shape[1]
    eps = noise.per_row(samples, r, dtype=x.dtype).transpose(0, 1)  # (N, S, r) view
    if x.dim() == 2:  # both moments in one product and one sum: (N, 2, 1, n) x (2, r, n) -> (N, 2, r)
        moments = (torch.stack([x, x * x], 1).unsqueeze(2) * c.w_t).sum(-1)
        mu_h, std_h = moments[:, None, 0], moments[:, None, 1].sqrt_()
        hh = _aligned_rows(moments.shape[0], samples, c.width, x)  # [h, 1, 0...], rows-outer
        h = hh[..., :r]
        torch.mul(eps, std_h, out=h)
        h.add_(mu_h)
        hh[..., r:].copy_(c.tail)
    else:  # (N, S, w): the mean's GEMM output becomes [h, 1, 0...] in place
        xr = rows_first(x)
        hh = row_matmul(xr, c.mu_b)
        std_h = row_matmul(square_rows(xr), c.var_b)[..., :r].sqrt_()
        hh[..., :r].add_(std_h.mul_(eps))
        hh[..., r].fill_(1.0)
    # y = ε ⊙ sqrt([h, 1]² [σ_A²ᵀ; σ_b²]) + [h, 1] [μ_Aᵀ; μ_b], in the std buffer
    y = row_matmul(square_rows(hh), c.a_var).sqrt_()
    y.mul_(noise.per_row(samples, m, dtype=x.dtype).transpose(0, 1))
    return row_matmul(hh, c.a_mu, out=y).transpose(0, 1)


def meanfield_rows(
    x: Tensor,
    w_mu: Tensor,
    w_var: Tensor,
    b_mu: Tensor | None,
    b_var: Tensor | None,
    samples: int,
    noise: NoiseSource,
) -> Tensor:
    """Batch-invariant local reparameterisation for a dense mean-field layer: (S, N, m) from (N | S, N, n).

    ``w_mu`` and ``w_var`` are (m, n); y = x μ_Wᵀ + μ_b + ε ⊙ sqrt(x² σ_W²ᵀ + σ_b²), row by row.
    """
    if x.dim() == 2:
        mean, var = shared_matmul(x, w_mu), shared_matmul(x * x, w_var)
    else:
        xr = rows_first(x)
        mean, var = row_matmul(xr, w_mu.T), row_matmul(square_rows(xr), w_var.T)
    if b_mu is not None:
        mean.add_(b_mu)
    if b_var is not None:
        var.add_(b_var)
    std = var.sqrt_()
    y = _aligned_rows(mean.shape[0], samples, w_mu.shape[0], x)
    torch.mul(noise.per_row(samples, w_mu.shape[0], dtype=x.dtype).transpose(0, 1), std, out=y)
    return y.add_(mean).transpose(0, 1)


def _needs_grad(post: FactorPosterior) -> bool:
    params = (post.mu_a, post.sigma_a, post.mu_b, post.sigma_b, post.bias_mu, post.bias_sigma)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)


def _with_bias_row(h: Tensor, w_t: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """([h, 1], [w_t; bias]) so that one GEMM gives h w_t + bias (or (h, w_t) without a bias)."""
    if bias is None:
        return h, w_t
    ones = h.new_ones((h.shape[0], 1))
    return torch.cat([h, ones], dim=1), torch.cat([w_t, bias.view(1, -1)], dim=0)


def lrt_a(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Exact h by LRT, then a sampled A_s shared by the rows: S·N·r + S·m·r normals."""
    h = _first_stage(x, post, samples, noise)
    return _times_a_t(h, _sampled_a_t(post, samples, noise, x.dtype))


def draw_factor_samples(post: FactorPosterior, samples: int, noise: NoiseSource) -> FactorSamples:
    """S draws of the factors, for the ``cached`` backend (in the packed layout of ``cache.py``)."""
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    b = _draw(post.mu_b, post.sigma_b, noise, samples)
    return pack_factor_samples(a, b, _shared_bias(post, noise, samples))
