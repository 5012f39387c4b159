"""The sampling op's dispatch: the backend registry, the one ``auto`` rule and argument checks.

A leaf of the package: it imports the CPU schemes and the noise and type modules, never the entry point
(:mod:`model_core.sampling.api`) or the custom op, so both of those can import it without a circle. The
Triton kernel module only exposes kernels; it is imported here, lazily, the one time the ``triton``
backend is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from model_core.sampling import cpu
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend, FactorPosterior

SamplerFn = Callable[[Tensor, FactorPosterior, int, NoiseSource], Tensor]

#: Backends that draw fresh noise; ``cached`` and ``auto`` are resolved by :func:`sample_lowrank`.
BACKENDS: dict[Backend, SamplerFn] = {
    Backend.MATERIALIZE: cpu.materialize,
    Backend.FACTORED: cpu.factored,
    Backend.LRT: cpu.lrt,
    Backend.LRT_A: cpu.lrt_a,
}


def register_backend(backend: Backend, fn: SamplerFn) -> None:
    """Add or replace a backend."""
    BACKENDS[backend] = fn


def register_triton_backend() -> bool:
    """Register the Triton kernel if Triton imports and CUDA (or ``TRITON_INTERPRET=1``) is there.

    Called lazily (``auto`` on CUDA, or an explicit ``triton`` request); returns whether it is registered.
    Safe to call any number of times.
    """
    if Backend.TRITON in BACKENDS:
        return True
    from model_core.sampling import triton_kernels

    if not triton_kernels.triton_runnable():
        return False
    register_backend(Backend.TRITON, triton_kernels.lrt_triton)
    return True


@dataclass(frozen=True)
class CpuCostModel:
    """Seconds per unit of work on the CPU, fitted by ``lrbnn bench sampling --fit`` on the 2-core dev box.

    Drawing a normal (~3 ns, torch's CPU RNG is single-threaded) costs far more than a multiply-add inside
    a GEMM, so the cheapest exact scheme is the one that draws the fewest normals unless its GEMM work is
    much larger. Fitted 2026-11-27 (least squares on relative error over the benchmark grid, one thread,
    process CPU time); the picks are the same for constants several times larger or smaller, see
    ``docs/performance.md``.
    """

    normal_s: float = 2.9e-9
    mac_s: float = 3.9e-11
    elementwise_s: float = 3.2e-10


COST_MODEL = CpuCostModel()


def work(
    backend: Backend, n_rows: int, samples: int, m: int, n: int, r: int, shared_x: bool
) -> tuple[int, int, int]:
    """(normals, multiply-adds, elementwise ops) a backend needs; ``shared_x`` = x is (N, n)."""
    s, nr = samples, n_rows
    first = nr * n * r if shared_x else s * nr * n * r  # one pass of x through B
    if backend is Backend.MATERIALIZE:
        return s * (r * (m + n) + m), s * m * n * r + s * nr * n * m, s * (r * (m + n) + nr * m)
    # the bias rides in the last GEMM as an extra row of A_sᵀ (r + 1), so the output is written once
    if backend in (Backend.FACTORED, Backend.CACHED):
        normals = 0 if backend is Backend.CACHED else s * (r * (m + n) + m)
        draws = 0 if backend is Backend.CACHED else s * (r * (m + n) + m)
        return normals, s * nr * n * r + s * nr * (r + 1) * m, draws + s * nr * (r + 1)
    if backend in (Backend.LRT, Backend.TRITON):  # triton: the same scheme, noise in registers
        return s * nr * (r + m), 2 * first + 2 * s * nr * r * m, s * nr * (2 * r + 4 * m)
    if backend is Backend.LRT_A:
        elem = s * nr * (2 * r + 1) + s * (r + 1) * m
        return s * nr * r + s * (m * r + m), 2 * first + s * nr * (r + 1) * m, elem
    raise ValueError(f"no work model for backend {backend.value!r}")


def estimated_seconds(
    backend: Backend,
    n_rows: int,
    samples: int,
    m: int,
    n: int,
    r: int,
    shared_x: bool,
    model: CpuCostModel | None = None,
) -> float:
    """Seconds per call under ``model`` (default: the fitted ``COST_MODEL`` the ``auto`` rule uses)."""
    normals, macs, elem = work(backend, n_rows, samples, m, n, r, shared_x)
    c = model or COST_MODEL
    return normals * c.normal_s + macs * c.mac_s + elem * c.elementwise_s


def choose_backend(
    x: Tensor,
    post: FactorPosterior,
    samples: int,
    noise: NoiseSource | None = None,
    *,
    per_example: bool = False,
) -> Backend:
    """The ``auto`` rule: Triton on CUDA, else the cheapest exact scheme for this shape.

    Only per-example schemes are eligible when the noise must be batch invariant: a ``rowwise`` noise
    source (per-request noise, merged or not) or ``per_example`` (the custom op, whose noise comes from
    row seeds).
    """
    if x.is_cuda and register_triton_backend():
        return Backend.TRITON
    if per_example or (noise is not None and noise.rowwise):
        return Backend.LRT
    shared_x = x.dim() == 2
    n_rows = int(x.shape[-2])
    m, n, r = post.out_features, post.in_features, post.rank
    candidates = (Backend.LRT, Backend.LRT_A, Backend.FACTORED)
    return min(candidates, key=lambda b: estimated_seconds(b, n_rows, samples, m, n, r, shared_x))


def check_arguments(x: Tensor, post: FactorPosterior, samples: int) -> None:
    """Raise ``ValueError`` naming what is wrong with the op's arguments."""
    if x.dim() not in (2, 3) or x.shape[-1] != post.in_features:
        raise ValueError(
            f"x must be (N, {post.in_features}) or (S, N, {post.in_features}); got {tuple(x.shape)}"
        )
    if x.dim() == 3 and x.shape[0] != samples:
        raise ValueError(f"x has {x.shape[0]} samples but {samples} were requested")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")


def dispatch(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource, backend: Backend) -> Tensor:
    """Run a noise-drawing backend (``auto`` resolved by :func:`choose_backend`) on checked arguments."""
    if backend is Backend.AUTO:
        backend = choose_backend(x, post, samples, noise)
    if backend is Backend.TRITON:
        register_triton_backend()
    try:
        fn = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"sampling backend {backend.value!r} is not available on this machine") from None
    return fn(x, post, samples, noise)


def available_backends() -> list[Backend]:
    return [Backend.AUTO, *BACKENDS, Backend.CACHED]
