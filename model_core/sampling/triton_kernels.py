"""The ``triton`` backend: two-stage LRT fused into one Triton kernel, Philox noise drawn in registers.

Stage 1 (μ_h = x μ_B, v_h = x² σ_B²) is two small matmuls done once for all samples (once per sample
when x is (S, N, n)). The kernel then takes a tile of BLOCK_P (sample, row) pairs × BLOCK_M output
columns and, in registers,

* draws h_s = μ_h + √v_h ⊙ ε₁ (r padded to a power of two >= 16, padded lanes masked to zero),
* computes the mean h μ_Aᵀ + μ_b and the variance h² σ_A²ᵀ + σ_b² with two ``tl.dot`` (fp32 accumulation),
* draws ε₂ and writes y = mean + √var ⊙ ε₂.

No noise tensor ever exists in global memory: the only writes are the S×N×m outputs.

Noise addressing (what makes the kernel batch-invariant): every normal is a function of (row seed, sample
index, stage, column) only, never of the row's position in the batch or of the tile shape. The row seed
(from :meth:`NoiseSource.seeds`) is the 64-bit Philox key; the 64-bit counter is ``(s << 32) | q`` with
``q = k // 4`` for stage 1 (latent k) and ``q = 2**31 + j // 4`` for stage 2 (column j). One Philox call
gives four normals (``tl.randn4x``, two Box–Muller pairs), used for four consecutive columns, so each
normal costs a quarter of a Philox block. Column tiles recompute the same stage-1 noise, so every column
sees the same h_s.

Triton is optional: this module imports without it. It only exposes kernels:
:func:`model_core.sampling.backends.register_triton_backend` registers :func:`lrt_triton` when Triton
imports and can run (CUDA, or the CPU interpreter with ``TRITON_INTERPRET=1``).
"""

import os
from typing import Any

import torch
from torch import Tensor

from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import FactorPosterior

try:  # Triton is an optional dependency (the ``gpu`` extra)
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None
    HAVE_TRITON = False

#: Offset of the stage-2 counters: stage 1 uses quads [0, ceil(r/4)), stage 2 [2**31, 2**31 + ceil(m/4)).
STAGE2_COUNTER = 2**31
#: Philox rounds (10 = the Random123 default, the same as ``tl.randn``).
PHILOX_ROUNDS = 10
#: Tile used under the interpreter (autotuning there would only waste CPU time). Each program instance
#: costs the interpreter a roughly fixed overhead, so the row tile is tall; BLOCK_M stays small so that
#: test shapes span several column tiles.
INTERPRET_CONFIG = {"BLOCK_P": 256, "BLOCK_M": 32}
#: ``tl.dot`` input precision on CUDA: "ieee" keeps full fp32 products (default), "tf32" uses tensor cores.
PRECISION_ENV = "LRBNN_TRITON_PRECISION"


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runnable() -> bool:
    """Triton imports and has somewhere to run: a CUDA device or the CPU interpreter."""
    return HAVE_TRITON and (torch.cuda.is_available() or interpreter_enabled())


def padded_rank(r: int) -> int:
    """r rounded up to a power of two, at least 16 (the smallest ``tl.dot`` inner dimension)."""
    return max(16, 1 << max(0, r - 1).bit_length())


if HAVE_TRITON:
    # Philox-4x32 and Box–Muller exactly as in ``triton.language.random`` (``tl.randn4x``), kept here as plain
    # functions that are jitted together with the kernel: the library's own helpers are jitted when Triton
    # is imported, so they only run under the interpreter if TRITON_INTERPRET was set before that import.

    def _philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr):
        for _ in tl.static_range(N_ROUNDS):
            _c0, _c2 = c0, c2
            c0 = tl.umulhi(0xCD9E8D57, _c2) ^ c1 ^ k0
            c2 = tl.umulhi(0xD2511F53, _c0) ^ c3 ^ k1
            c1 = tl.mul(0xCD9E8D57, _c2, sanitize_overflow=False)
            c3 = tl.mul(0xD2511F53, _c0, sanitize_overflow=False)
            k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
            k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
        return c0, c1, c2, c3

    def _uniform(x):
        x = x.to(tl.int32, bitcast=True)
        x = tl.where(x < 0, -x - 1, x)
        return x * 4.6566127342e-10

    def _box_muller(u1, u2):
        u1 = tl.maximum(1.0e-7, u1)
        th = 6.283185307179586 * u2
        rad = tl.sqrt(-2.0 * tl.log(u1))
        return rad * tl.cos(th), rad * tl.sin(th)

    def _randn4x(seed, offset, N_ROUNDS: tl.constexpr):
        """Four normals per int64 ``offset`` for a uint64 ``seed`` (== ``tl.randn4x(seed, offset)``)."""
        seed = seed.to(tl.uint64)
        k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
        k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
        lo = offset.to(tl.uint32)
        hi = (offset >> 32).to(tl.uint32)
        zero = lo * 0
        i1, i2, i3, i4 = _philox4x32(lo, hi, zero, zero, k0, k1, N_ROUNDS)
        n1, n2 = _box_muller(_uniform(i1), _uniform(i2))
        n3, n4 = _box_muller(_uniform(i3), _uniform(i4))
        return n1, n2, n3, n4

    def _normal_tile(seed, counter, ROWS: tl.constexpr, QUADS: tl.constexpr, N_ROUNDS: tl.constexpr):
        """A (ROWS, 4·QUADS) tile of normals: column 4q + l comes from lane l of ``counter[:, q]``."""
        n1, n2, n3, n4 = _randn4x(seed, counter, N_ROUNDS)
        a = tl.reshape(tl.join(n1, n2), (ROWS, 2 * QUADS))
        b = tl.reshape(tl.join(n3, n4), (ROWS, 2 * QUADS))
        return tl.reshape(tl.join(a, b), (ROWS, 4 * QUADS))

    def _lrt_kernel(
        mu_h_ptr,  # (S or 1, N, R) fp32: stage-1 means
        std_h_ptr,  # same layout: stage-1 standard deviations √v_h
        mu_a_ptr,  # (M, R) fp32 contiguous
        var_a_ptr,  # (M, R) fp32 contiguous: σ_A²
        bias_mu_ptr,  # (M,) fp32 (unused without bias)
        bias_var_ptr,  # (M,) fp32: σ_b² (unused without a bias sigma)
        seeds_ptr,  # (N,) int64 row seeds
        out_ptr,  # (S, N, M) fp32 contiguous
        total_p,  # S * N
        n_rows,  # N
        M,
        R,
        stride_hs,  # sample stride of mu_h / std_h (0 when x is shared by the samples)
        stride_hn,  # row stride of mu_h / std_h
        p_bucket,  # autotune key only: next power of two of S * N
        HAS_BIAS: tl.constexpr,
        HAS_BIAS_SIGMA: tl.constexpr,
        R_PAD: tl.constexpr,
        PRECISION: tl.constexpr,
        N_ROUNDS: tl.constexpr,
        STAGE2: tl.constexpr,  # STAGE2_COUNTER (kernels may only read constexpr globals)
        BLOCK_P: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_m = tl.program_id(1)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < total_p
        s = (p // n_rows).to(tl.int64)
        i = p % n_rows
        seed = tl.load(seeds_ptr + i, mask=p_mask, other=0)[:, None]
        counter_base = (s << 32)[:, None]  # Philox counter: high word = sample, low word = stage/column quad

        # stage 1: h = mu_h + std_h * eps1 for this tile's (sample, row) pairs, all R latents
        k = tl.arange(0, R_PAD)
        k_mask = k < R
        h_off = s[:, None] * stride_hs + i[:, None].to(tl.int64) * stride_hn + k[None, :]
        h_mask = p_mask[:, None] & k_mask[None, :]
        mu_h = tl.load(mu_h_ptr + h_off, mask=h_mask, other=0.0).to(tl.float32)
        std_h = tl.load(std_h_ptr + h_off, mask=h_mask, other=0.0).to(tl.float32)
        kq = tl.arange(0, R_PAD // 4).to(tl.int64)
        eps1 = _normal_tile(seed, counter_base + kq[None, :], BLOCK_P, R_PAD // 4, N_ROUNDS)
        h = mu_h + std_h * eps1

        # stage 2: y = h mu_A^T + mu_b + sqrt(h^2 var_A^T + var_b) * eps2 for BLOCK_M columns
        j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        j_mask = j < M
        a_off = j[None, :].to(tl.int64) * R + k[:, None]
        a_mask = k_mask[:, None] & j_mask[None, :]
        mu_at = tl.load(mu_a_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
        var_at = tl.load(var_a_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
        mean = tl.dot(h, mu_at, input_precision=PRECISION)
        var = tl.dot(h * h, var_at, input_precision=PRECISION)
        if HAS_BIAS:
            mean += tl.load(bias_mu_ptr + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS_SIGMA:
            var += tl.load(bias_var_ptr + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
        jq = (pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)).to(tl.int64)
        counter2 = (counter_base + STAGE2) + jq[None, :]
        eps2 = _normal_tile(seed, counter2, BLOCK_P, BLOCK_M // 4, N_ROUNDS)
        y = mean + tl.sqrt(tl.maximum(var, 0.0)) * eps2
        out_off = p[:, None].to(tl.int64) * M + j[None, :]
        tl.store(out_ptr + out_off, y, mask=p_mask[:, None] & j_mask[None, :])


#: The undecorated kernel and helpers (the module-level names are rebound to the jitted ones on use).
_PLAIN: dict[str, Any] = (
    {
        name: globals()[name]
        for name in ("_lrt_kernel", "_philox4x32", "_uniform", "_box_muller", "_randn4x", "_normal_tile")
    }
    if HAVE_TRITON
    else {}
)
_KERNELS: dict[bool, Any] = {}
_HELPERS: dict[bool, dict[str, Any]] = {}
_HELPER_SOURCES = ("_philox4x32", "_uniform", "_box_muller", "_randn4x", "_normal_tile")


def _jit(fn: Any, interpret: bool) -> Any:
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    return triton.runtime.jit.JITFunction(fn)


def _cuda_configs() -> list[Any]:
    """(BLOCK_P, BLOCK_M, warps) candidates, kept few: each one is a separate compile (~5 s) per variant."""
    shapes = [(32, 128, 4), (64, 64, 4), (64, 128, 4), (64, 128, 8), (128, 64, 8), (128, 128, 8)]
    return [triton.Config({"BLOCK_P": p, "BLOCK_M": m}, num_warps=w) for p, m, w in shapes]


def _quick_bench(fn: Any, quantiles: Any) -> Any:
    """Autotuning timer: 5 ms warm-up, 20 ms of runs per config (Triton's default is 25 + 100 ms)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def get_kernel(interpret: bool | None = None) -> Any:
    """The jitted kernel: autotuned on CUDA, a plain jit (fixed tile) under the interpreter.

    Built on first use, for the mode asked for (by default: ``TRITON_INTERPRET``), so neither the import
    order of Triton nor the time the variable is set matters.
    """
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    mode = interpreter_enabled() if interpret is None else interpret
    if mode not in _KERNELS:
        _HELPERS[mode] = {name: _jit(_PLAIN[name], mode) for name in _HELPER_SOURCES}
        jitted = _jit(_PLAIN["_lrt_kernel"], mode)
        if mode:
            _KERNELS[mode] = jitted
        else:
            _KERNELS[mode] = triton.autotune(
                configs=_cuda_configs(), key=["M", "R", "p_bucket"], do_bench=_quick_bench
            )(jitted)
    globals().update(_HELPERS[mode])  # the kernel calls its helpers by their module-level names
    return _KERNELS[mode]


def _precision(interpret: bool) -> str:
    if interpret:
        return "ieee"
    value = os.environ.get(PRECISION_ENV, "ieee")
    if value not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"{PRECISION_ENV} must be ieee, tf32 or tf32x3, got {value!r}")
    return value


def lrt_triton_from_seeds(x: Tensor, post: FactorPosterior, samples: int, row_seeds: Tensor) -> Tensor:
    """Two-stage LRT outputs (S, N, m) with the noise of row i derived from ``row_seeds[i]`` only.

    ``x`` is (N, n) or (S, N, n); ``row_seeds`` is (N,) or (N, 1) int64. Computes in fp32 and returns
    ``x.dtype``.
    """
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    interpret = interpreter_enabled()
    if not x.is_cuda and not interpret:
        raise RuntimeError("the triton backend needs a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)")
    device = x.device
    m, r = post.out_features, post.rank
    n_rows = int(x.shape[-2])
    seeds = row_seeds.reshape(-1).to(device=device, dtype=torch.int64).contiguous()
    if seeds.numel() != n_rows:
        raise ValueError(f"need one seed per row: {seeds.numel()} seeds for {n_rows} rows")
    f32 = torch.float32
    xf = x.to(f32)
    mu_b = post.mu_b.to(device=device, dtype=f32)
    sigma_b = post.sigma_b.to(device=device, dtype=f32)
    # stage 1, once for all samples (per sample when x is (S, N, n)): tiny matmuls, no noise
    mu_h = torch.matmul(xf, mu_b).contiguous()
    std_h = torch.matmul(xf * xf, sigma_b * sigma_b).sqrt_().contiguous()
    stride_hs = 0 if x.dim() == 2 else n_rows * r
    mu_a = post.mu_a.to(device=device, dtype=f32).contiguous()
    var_a = post.sigma_a.to(device=device, dtype=f32).square().contiguous()
    has_bias = post.bias_mu is not None
    has_bias_sigma = has_bias and post.bias_sigma is not None
    bias_mu = post.bias_mu.to(device=device, dtype=f32).contiguous() if post.bias_mu is not None else mu_a
    if post.bias_mu is not None and post.bias_sigma is not None:
        bias_var = post.bias_sigma.to(device=device, dtype=f32).square().contiguous()
    else:
        bias_var = mu_a
    out = torch.empty((samples, n_rows, m), dtype=f32, device=device)
    total_p = samples * n_rows
    if total_p == 0 or m == 0:
        return out.to(x.dtype)
    kernel = get_kernel(interpret)
    r_pad = padded_rank(r)
    p_bucket = 1 << max(0, total_p - 1).bit_length()
    args = (
        mu_h,
        std_h,
        mu_a,
        var_a,
        bias_mu,
        bias_var,
        seeds,
        out,
        total_p,
        n_rows,
        m,
        r,
        stride_hs,
        r,
        p_bucket,
    )
    consts: dict[str, Any] = {
        "HAS_BIAS": has_bias,
        "HAS_BIAS_SIGMA": has_bias_sigma,
        "R_PAD": r_pad,
        "PRECISION": _precision(interpret),
        "N_ROUNDS": PHILOX_ROUNDS,
        "STAGE2": STAGE2_COUNTER,
    }
    if interpret:
        block_p, block_m = INTERPRET_CONFIG["BLOCK_P"], INTERPRET_CONFIG["BLOCK_M"]
        kernel[(triton.cdiv(total_p, block_p), triton.cdiv(m, block_m))](
            *args, **consts, BLOCK_P=block_p, BLOCK_M=block_m
        )
    else:

        def grid(meta: dict[str, Any]) -> tuple[int, int]:
            return (triton.cdiv(total_p, meta["BLOCK_P"]), triton.cdiv(m, meta["BLOCK_M"]))

        kernel[grid](*args, **consts)
    return out if x.dtype == f32 else out.to(x.dtype)


_SIGNATURE = {
    **{
        name: "*fp32"
        for name in ("mu_h_ptr", "std_h_ptr", "mu_a_ptr", "var_a_ptr", "bias_mu_ptr", "bias_var_ptr")
    },
    "seeds_ptr": "*i64",
    "out_ptr": "*fp32",
    **{name: "i32" for name in ("total_p", "n_rows", "M", "R", "stride_hs", "stride_hn", "p_bucket")},
}


def compile_for_cuda(
    capability: int = 90,
    precision: str = "ieee",
    has_bias: bool = True,
    r_pad: int = 16,
    block_p: int = 64,
    block_m: int = 128,
    num_warps: int = 4,
) -> dict[str, Any]:
    """Compile the kernel ahead of time for a CUDA compute capability (no GPU needed, only Triton's
    bundled ``ptxas``): a check that the compiled path builds. Returns a few facts about the binary."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    get_kernel(False)  # binds the compiled-mode helpers
    consts = {
        "HAS_BIAS": has_bias,
        "HAS_BIAS_SIGMA": has_bias,
        "R_PAD": r_pad,
        "PRECISION": precision,
        "N_ROUNDS": PHILOX_ROUNDS,
        "STAGE2": STAGE2_COUNTER,
        "BLOCK_P": block_p,
        "BLOCK_M": block_m,
    }
    signature = {**_SIGNATURE, **{name: "constexpr" for name in consts}}
    src = ASTSource(fn=_KERNELS[False].fn, signature=signature, constexprs=consts)
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    return {
        "capability": capability,
        "precision": precision,
        "cubin": "cubin" in compiled.asm,
        "shared_bytes": compiled.metadata.shared,
        "mma_instructions": ptx.count("mma."),
        "global_stores": ptx.count("st.global"),
    }


def lrt_triton(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """The ``triton`` backend (a :data:`~model_core.sampling.backends.SamplerFn`): one seed per row."""
    seeds = noise.seeds(1)
    return lrt_triton_from_seeds(x, post, samples, seeds)


__all__ = [
    "HAVE_TRITON",
    "get_kernel",
    "lrt_triton",
    "lrt_triton_from_seeds",
    "padded_rank",
    "triton_runnable",
]
