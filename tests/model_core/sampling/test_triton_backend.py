"""The Triton kernel on the CPU interpreter (``TRITON_INTERPRET=1``): moments, seeds, batch invariance and
the absence of any noise tensor in memory. Small shapes: the interpreter runs each program in numpy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lowrank_sampling_helpers import assert_same_distribution, random_posterior
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model_core.sampling import Backend, FactorPosterior, NoiseSource, sample_lowrank
from model_core.sampling.backends import BACKENDS, register_triton_backend

pytestmark = pytest.mark.usefixtures("triton_interpreter")

S = 4000


@pytest.fixture
def tk() -> Any:
    from model_core.sampling import triton_kernels

    return triton_kernels


@pytest.fixture
def tall_tiles(tk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer, taller row tiles for the S = 4000 moment tests (interpreter time is per program)."""
    monkeypatch.setitem(tk.INTERPRET_CONFIG, "BLOCK_P", 1024)


def _x(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_registration_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert register_triton_backend()
    assert Backend.TRITON in BACKENDS
    del BACKENDS[Backend.TRITON]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        assert not register_triton_backend()
        assert Backend.TRITON not in BACKENDS
        with pytest.raises(ValueError, match="not available"):
            sample_lowrank(
                _x((1, 4), 0), random_posterior(3, 4, 2, 0), 2, NoiseSource.from_seed(0, 1), "triton"
            )


# m = 45 spans two 32-wide column tiles; 4000·N rows are not a multiple of the row tile; r = 3 and 5 pad to 16
@pytest.mark.parametrize(("m", "n", "r", "rows"), [(45, 20, 3, 1), (19, 7, 5, 2)])
def test_triton_moments_match_materialize(tall_tiles: None, m: int, n: int, r: int, rows: int) -> None:
    post = random_posterior(m, n, r, seed=m + n + r)
    x = _x((rows, n), seed=rows)
    ref = sample_lowrank(x, post, S, NoiseSource.from_seed(1, rows), "materialize")
    y = sample_lowrank(x, post, S, NoiseSource.from_seed(2, rows), "triton")
    assert y.shape == (S, rows, m) and y.dtype == torch.float32
    assert_same_distribution(y, ref, example=rows - 1, cols=(0, m - 1), label="triton")


def test_triton_per_sample_inputs_and_no_bias(tall_tiles: None) -> None:
    m, n, r, rows, samples = 23, 14, 4, 1, 3000
    post = random_posterior(m, n, r, seed=5, bias=False)
    x = _x((rows, n), seed=3).expand(samples, rows, n) * (1 + 0.5 * _x((samples, 1, 1), seed=4))
    ref = sample_lowrank(x, post, samples, NoiseSource.from_seed(1, rows), "materialize")
    y = sample_lowrank(x, post, samples, NoiseSource.from_seed(2, rows), "triton")
    assert_same_distribution(y, ref, example=0, cols=(0, m - 1), label="triton 3-d x")


def test_triton_same_seed_same_result_and_tile_invariance(tk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    post = random_posterior(37, 10, 3, seed=0)
    x = _x((3, 10), seed=0)
    a = sample_lowrank(x, post, 40, NoiseSource.from_seed(7, 3), "triton")
    b = sample_lowrank(x, post, 40, NoiseSource.from_seed(7, 3), "triton")
    c = sample_lowrank(x, post, 40, NoiseSource.from_seed(8, 3), "triton")
    assert torch.equal(a, b) and not torch.equal(a, c)
    monkeypatch.setitem(tk.INTERPRET_CONFIG, "BLOCK_P", 16)
    monkeypatch.setitem(tk.INTERPRET_CONFIG, "BLOCK_M", 64)
    d = sample_lowrank(x, post, 40, NoiseSource.from_seed(7, 3), "triton")
    torch.testing.assert_close(d, a, rtol=1e-5, atol=1e-5)  # same noise; only the dot's summation order


def test_triton_column_tiles_share_h(tk: Any) -> None:
    """With identical rows of A, no A noise and no bias, every column equals h·a: the stage-1 noise drawn
    independently by each column tile must be the same."""
    m, r = 70, 3
    post = random_posterior(m, 6, r, seed=1, bias=False)
    mu_a = post.mu_a[:1].expand(m, r).contiguous()
    post = type(post)(mu_a, torch.zeros(m, r), post.mu_b, post.sigma_b)
    y = sample_lowrank(_x((2, 6), 0), post, 50, NoiseSource.from_seed(3, 2), "triton")
    assert (y.std(0) > 0).all() is not None
    torch.testing.assert_close(y, y[..., :1].expand_as(y), rtol=1e-5, atol=1e-6)
    assert y[:, 0, 0].std() > 0.1  # h is random


def _integer_posterior(m: int, n: int, r: int) -> FactorPosterior:
    """Small-integer factors: every dot product is exact in fp32, whatever the summation order."""
    g = torch.Generator().manual_seed(0)

    def ints(*shape: int, lo: int = -3, hi: int = 4) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=g).float()

    return FactorPosterior(ints(m, r), ints(m, r, lo=1), ints(n, r), ints(n, r, lo=1), ints(m), ints(m, lo=1))


@pytest.mark.parametrize("exact", [True, False])
def test_triton_batch_invariance(exact: bool) -> None:
    """A request's samples do not change when other requests join the batch or when it moves in it.

    With r = 1 and integer inputs every product and sum is exact, so the samples must be bit-identical (the
    noise depends on the row seed only); in general the host's stage-1 BLAS matmul may round differently
    for a different batch, so only float rounding may differ.
    """
    m, n, r = 21, 13, 1 if exact else 3
    post = _integer_posterior(m, n, r) if exact else random_posterior(m, n, r, seed=2)
    x_a = torch.randint(-2, 3, (2, n)).float() if exact else _x((2, n), seed=1)
    x_b = _x((3, n), seed=2).round()
    alone = sample_lowrank(x_a, post, 32, NoiseSource.from_seeds([11], [2]), "triton")
    merged = sample_lowrank(
        torch.cat([x_b, x_a]), post, 32, NoiseSource.from_seeds([99, 11], [3, 2]), "triton"
    )
    front = sample_lowrank(
        torch.cat([x_a, x_b]), post, 32, NoiseSource.from_seeds([11, 99], [2, 3]), "triton"
    )
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(merged[:, 3:], alone, **tol)
    torch.testing.assert_close(front[:, :2], alone, **tol)
    other = sample_lowrank(x_a, post, 32, NoiseSource.from_seeds([12], [2]), "triton")
    assert (other - alone).abs().max() > 0.1  # and the seed does matter


_RNG_OPS = {
    "normal",
    "normal_",
    "randn",
    "randn_like",
    "rand",
    "rand_like",
    "uniform_",
    "bernoulli_",
    "randint",
}


class _AllocationRecorder(TorchDispatchMode):
    """Records the size in bytes of every tensor an aten op returns, and every random-number op."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes: list[tuple[str, int]] = []
        self.rng: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):  # bytes: the interpreter copies storages as uint8
                self.nbytes.append((name, t.numel() * t.element_size()))
                if name in _RNG_OPS:
                    self.rng.append((name, t.numel()))
        return out


@pytest.mark.parametrize("per_sample_x", [False, True])
def test_triton_path_allocates_no_noise_tensor(per_sample_x: bool) -> None:
    """Inspect (not time) the Triton path: no tensor of S·r·(m+n) fp32 elements or more is allocated (the
    output itself is smaller here), and the only random op is the (N, 1) seed draw: all the normals are
    drawn inside the kernel."""
    m, n, r, rows, samples = 40, 24, 4, 2, 512
    post = random_posterior(m, n, r, seed=3)
    x = _x((rows, n), seed=0)
    if per_sample_x:
        x = x.expand(samples, rows, n).contiguous()
    noise_bytes = 4 * samples * r * (m + n)  # one fp32 factor-noise tensor
    assert 4 * samples * rows * m < noise_bytes and 4 * x.numel() < noise_bytes  # the output itself is fine
    sample_lowrank(x, post, samples, NoiseSource.from_seed(0, rows), "triton")  # jit / warm caches
    rec = _AllocationRecorder()
    with rec:
        y = sample_lowrank(x, post, samples, NoiseSource.from_seed(0, rows), "triton")
    assert y.shape == (samples, rows, m)
    biggest = max(rec.nbytes, key=lambda t: t[1])
    assert biggest[1] < noise_bytes, biggest
    assert rec.rng == [("randint", rows)], rec.rng


def test_the_allocation_check_catches_noise_tensors() -> None:
    """The recorder sees the noise of the eager schemes (so the checks above have teeth)."""
    m, n, r, rows, samples = 40, 24, 4, 2, 512
    post = random_posterior(m, n, r, seed=3)
    x = _x((rows, n), seed=0)
    rec = _AllocationRecorder()
    with rec:
        sample_lowrank(x, post, samples, NoiseSource.from_seed(0, rows), "factored")
    assert sum(k for _, k in rec.rng) >= samples * r * (m + n)
    rec = _AllocationRecorder()
    with rec:
        sample_lowrank(x, post, samples, NoiseSource.from_seed(0, rows), "lrt")
    assert max(k for _, k in rec.rng) == samples * rows * m


_PHILOX_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: tl.randn4x itself must be interpretable
sys.path.insert(0, sys.argv[1])
import torch
import triton
import triton.language as tl
from model_core.sampling import triton_kernels as tk

tk.get_kernel(True)


@triton.jit
def both(seeds_ptr, out_ref_ptr, out_ours_ptr, BLOCK: tl.constexpr):
    row = tl.arange(0, BLOCK)
    seed = tl.load(seeds_ptr + row)[:, None]
    offset = (tl.arange(0, BLOCK).to(tl.int64) + (7 << 32) + 2**31)[None, :]
    r1, r2, r3, r4 = tl.randn4x(seed, offset)
    o1, o2, o3, o4 = tk._randn4x(seed, offset, 10)
    idx = row[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    tl.store(out_ref_ptr + idx, r1 + 10 * r2 + 100 * r3 + 1000 * r4)
    tl.store(out_ours_ptr + idx, o1 + 10 * o2 + 100 * o3 + 1000 * o4)


seeds = torch.randint(0, 2**62, (16,), generator=torch.Generator().manual_seed(0))
ref, ours = torch.empty(16, 16), torch.empty(16, 16)
both[(1,)](seeds, ref, ours, BLOCK=16)
assert torch.equal(ref, ours), (ref - ours).abs().max()
print("same")
"""


def test_our_philox_is_tritons_randn4x(tmp_path: Path) -> None:
    """The kernel's Philox/Box–Muller helpers give bit-identical normals to ``tl.randn4x``."""
    script = tmp_path / "philox_check.py"
    script.write_text(_PHILOX_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[3])
    res = subprocess.run(
        [sys.executable, str(script), root], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0 and "same" in res.stdout, res.stdout + res.stderr
