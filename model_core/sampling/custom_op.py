"""``lrbnn::sample_lowrank``: the sampling op as one PyTorch custom operator.

``torch.compile`` and ``torch.export`` see a single opaque node (with a fake-tensor implementation for
shape propagation) instead of tracing into the backends. A ``torch.Generator`` cannot cross the op
boundary, so the op takes one int64 seed per row (:meth:`NoiseSource.seeds`) and derives its noise from
them:

* ``triton`` (and ``auto`` on CUDA): the Triton kernel keys Philox with the row seeds;
* ``lrt`` (and ``auto`` on the CPU): each row gets its own CPU generator seeded with its seed, so a row's
  samples depend only on its seed (batch-invariant, like merged requests in separate noise blocks);
* ``lrt-a``, ``factored``, ``materialize`` share weight noise across rows: they use one generator seeded
  with the first row's seed (only meaningful when the batch is one request).

Same seeds and backend give the same result; the noise differs from a :class:`NoiseSource`-driven call.
"""

from typing import Optional

import torch
from torch import Tensor

from model_core.sampling.backends import check_arguments, choose_backend, dispatch
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend, FactorPosterior

OP_NAME = "lrbnn::sample_lowrank"
_SHARED_NOISE = (Backend.LRT_A, Backend.FACTORED, Backend.MATERIALIZE)


def _resolve(backend: str, x: Tensor, post: FactorPosterior, samples: int) -> Backend:
    b = Backend(backend)
    if b is Backend.CACHED:
        raise ValueError("the cached backend needs factor samples; call sample_lowrank with a cache")
    if b is Backend.AUTO:  # row-seeded noise is per example: the rule picks triton on CUDA, else lrt
        return choose_backend(x, post, samples, per_example=True)
    return b


# `Optional[...]` rather than `X | None`: torch.library reads the annotations to build the op's schema.
@torch.library.custom_op(OP_NAME, mutates_args=())
def sample_lowrank_op(
    x: Tensor,
    mu_a: Tensor,
    sigma_a: Tensor,
    mu_b: Tensor,
    sigma_b: Tensor,
    bias_mu: Optional[Tensor],  # noqa: UP045
    bias_sigma: Optional[Tensor],  # noqa: UP045
    row_seeds: Tensor,
    samples: int,
    backend: str,
) -> Tensor:
    """S×N×m sampled outputs of the low-rank layer, noise derived from ``row_seeds`` (N,) int64."""
    post = FactorPosterior(mu_a, sigma_a, mu_b, sigma_b, bias_mu, bias_sigma)
    check_arguments(x, post, samples)
    b = _resolve(backend, x, post, samples)
    seeds = row_seeds.reshape(-1)
    n_rows = int(x.shape[-2])
    if seeds.numel() != n_rows:
        raise ValueError(f"need one seed per row: {seeds.numel()} seeds for {n_rows} rows")
    if b is Backend.TRITON:
        from model_core.sampling.triton_kernels import lrt_triton_from_seeds

        return lrt_triton_from_seeds(x, post, samples, seeds).to(x.dtype)
    seed_list = [int(v) for v in seeds.cpu().tolist()]
    if b is Backend.LRT:
        noise = NoiseSource.from_seeds(seed_list, [1] * n_rows, device=x.device)
    elif b in _SHARED_NOISE:
        noise = NoiseSource.from_seed(seed_list[0] if seed_list else 0, n_rows, device=x.device)
    else:  # pragma: no cover - every Backend is handled above
        raise ValueError(f"unsupported backend {backend!r}")
    # always a fresh tensor (never aliases an input); contiguous as the fake implementation promises (the
    # row-wise serving pass returns an (S, N, m) view of rows-outer memory)
    return dispatch(x, post, samples, noise, b).contiguous()


@sample_lowrank_op.register_fake
def _sample_lowrank_fake(
    x: Tensor,
    mu_a: Tensor,
    sigma_a: Tensor,
    mu_b: Tensor,
    sigma_b: Tensor,
    bias_mu: Optional[Tensor],  # noqa: UP045
    bias_sigma: Optional[Tensor],  # noqa: UP045
    row_seeds: Tensor,
    samples: int,
    backend: str,
) -> Tensor:
    return x.new_empty((samples, x.shape[-2], mu_a.shape[0]))


def sample_lowrank_seeded(
    x: Tensor, post: FactorPosterior, samples: int, row_seeds: Tensor, backend: str = "auto"
) -> Tensor:
    """Call ``torch.ops.lrbnn.sample_lowrank`` with a :class:`FactorPosterior`."""
    return torch.ops.lrbnn.sample_lowrank(
        x,
        post.mu_a,
        post.sigma_a,
        post.mu_b,
        post.sigma_b,
        post.bias_mu,
        post.bias_sigma,
        row_seeds.reshape(-1),
        samples,
        str(backend),
    )


__all__ = ["OP_NAME", "sample_lowrank_op", "sample_lowrank_seeded"]
