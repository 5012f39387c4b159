"""One prepared check of the sampling op on a lent GPU (run by ``benchmarks/gpu_check.sh``).

1. Environment and the Philox port: the kernel's own Philox/Box–Muller helpers against ``tl.randn4x``.
2. Correctness on the GPU: ``triton`` against ``lrt`` (and ``materialize`` on small shapes) — means,
   variances and one cross-output covariance within 5 Monte Carlo standard errors; seeds reproduce;
   batch invariance (bit-exact for r = 1 integer inputs).
3. Timings with CUDA events (warm-up, median of many runs): triton (eager launch and CUDA graph; ieee and
   tf32 dot precision), lrt, factored, materialize, at S = 512 for N in 1..256; floors from a measured
   write bandwidth and a measured TF32 matmul rate.
4. JSON to ``$OUT/gpu_check.json`` and a short table last.

Stays under a wall-clock budget (``--budget-s``): later sections are skipped, not started, when time is
short. ``--dry-run`` runs the argument parsing, the CPU reference parts and the JSON/table writing without
CUDA (and the Triton parts too if ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from torch import Tensor

from model_core.sampling import NoiseSource, sample_lowrank
from model_core.sampling import triton_kernels as tk
from model_core.sampling.bench import random_posterior
from model_core.sampling.types import FactorPosterior

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

Z = 5.0


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


# -- statistics ---------------------------------------------------------------------------------------
def moment_zscores(y: Tensor, ref: Tensor, example: int, cols: tuple[int, int]) -> dict[str, float]:
    """Largest |difference| / standard error of the means, variances and cov(y_c0, y_c1) of one example."""

    def stats(t: Tensor) -> dict[str, Tensor]:
        t = t.double()
        s = t.shape[0]
        mean = t.mean(0)
        c = t - mean
        var = (c * c).sum(0) / (s - 1)
        prod = c[:, example, cols[0]] * c[:, example, cols[1]]
        return {
            "mean": mean,
            "se2_mean": var / s,
            "var": var,
            "se2_var": ((c**4).mean(0) - var * var).clamp_min(0) / s,
            "cov": prod.sum() / (s - 1),
            "se2_cov": prod.var() / s,
        }

    a, b = stats(y), stats(ref)
    out = {}
    for key in ("mean", "var", "cov"):
        z = (a[key] - b[key]).abs() / ((a[f"se2_{key}"] + b[f"se2_{key}"]).sqrt() + 1e-12)
        out[key] = float(z.max())
    return out


# -- correctness ----------------------------------------------------------------------------------------
if HAVE_TRITON:

    def _philox_pair(seeds_ptr, ref_ptr, ours_ptr, BLOCK: tl.constexpr):
        row = tl.arange(0, BLOCK)
        seed = tl.load(seeds_ptr + row)[:, None]
        offset = (tl.arange(0, BLOCK).to(tl.int64) + (7 << 32) + 2**31)[None, :]
        r1, r2, r3, r4 = tl.randn4x(seed, offset)
        o1, o2, o3, o4 = tk._randn4x(seed, offset, 10)
        idx = row[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
        tl.store(ref_ptr + idx, r1 + 10 * r2 + 100 * r3 + 1000 * r4)
        tl.store(ours_ptr + idx, o1 + 10 * o2 + 100 * o3 + 1000 * o4)


def philox_port_check(device: torch.device) -> dict[str, Any]:
    """The kernel's Philox helpers give the same normals as ``tl.randn4x`` (compiled or interpreted)."""
    tk.get_kernel(device.type != "cuda")  # binds tk._randn4x to its jitted form
    kernel = triton.jit(_philox_pair)
    seeds = torch.randint(0, 2**62, (16,), generator=torch.Generator().manual_seed(0)).to(device)
    ref = torch.empty(16, 16, device=device)
    ours = torch.empty(16, 16, device=device)
    kernel[(1,)](seeds, ref, ours, BLOCK=16)
    diff = float((ref - ours).abs().max())
    return {"check": "philox port == tl.randn4x", "max_abs_diff": diff, "pass": diff == 0.0}


def correctness(device: torch.device, triton_ok: bool, samples: int, small: bool) -> list[dict[str, Any]]:
    """triton vs lrt (vs materialize on the small shapes), determinism and batch invariance."""
    results: list[dict[str, Any]] = []
    shapes = [  # (m, n, r, N, per-sample x, bias): tile remainders, r = 1, N = 1, later layers
        (45, 20, 3, 1, False, True),
        (130, 70, 15, 5, False, True),
        (1000, 1000, 16, 2, False, True),
        (77, 33, 1, 3, True, False),
        (256, 256, 16, 4, True, True),
    ]
    for m, n, r, rows, per_sample, bias in shapes:
        if small and m * n > 100_000:
            continue
        post = _random_post(m, n, r, bias, device)
        x = torch.randn(rows, n, generator=torch.Generator().manual_seed(m)).to(device)
        if per_sample:
            scale = 1 + 0.5 * torch.randn(samples, 1, 1, generator=torch.Generator().manual_seed(1)).to(
                device
            )
            x = x.expand(samples, rows, n) * scale
        ref_backend = "materialize" if m * n <= 100_000 else "lrt"
        ref = sample_lowrank(x, post, samples, NoiseSource.from_seed(1, rows, device=device), ref_backend)
        candidates = ["lrt"] + (["triton"] if triton_ok else [])
        for backend in candidates:
            y = sample_lowrank(x, post, samples, NoiseSource.from_seed(2, rows, device=device), backend)
            z = moment_zscores(y, ref, rows - 1, (0, m - 1))
            again = sample_lowrank(x, post, samples, NoiseSource.from_seed(2, rows, device=device), backend)
            results.append(
                {
                    "check": f"{backend} vs {ref_backend}",
                    "shape": {
                        "m": m,
                        "n": n,
                        "r": r,
                        "batch": rows,
                        "per_sample_x": per_sample,
                        "bias": bias,
                    },
                    "samples": samples,
                    "max_z": z,
                    "deterministic": bool(torch.equal(y, again)),
                    "pass": max(z.values()) <= Z
                    and bool(torch.equal(y, again))
                    and bool(torch.isfinite(y).all()),
                }
            )
    if triton_ok:
        results.append(_batch_invariance(device))
    return results


def _random_post(m: int, n: int, r: int, bias: bool, device: torch.device) -> FactorPosterior:
    g = torch.Generator().manual_seed(m * 7 + n + r)

    def t(*shape: int, scale: bool = False) -> Tensor:
        v = 0.2 + 0.6 * torch.rand(shape, generator=g) if scale else 0.7 * torch.randn(shape, generator=g)
        return v.to(device)

    if not bias:
        return FactorPosterior(t(m, r), t(m, r, scale=True), t(n, r), t(n, r, scale=True))
    return FactorPosterior(t(m, r), t(m, r, scale=True), t(n, r), t(n, r, scale=True), t(m), t(m, scale=True))


def _batch_invariance(device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)

    def ints(*shape: int, lo: int = -3, hi: int = 4) -> Tensor:
        return torch.randint(lo, hi, shape, generator=g).float().to(device)

    m, n = 300, 40
    post = FactorPosterior(ints(m, 1), ints(m, 1, lo=1), ints(n, 1), ints(n, 1, lo=1), ints(m), ints(m, lo=1))
    x_a, x_b = ints(2, n, lo=-2, hi=3), ints(37, n, lo=-2, hi=3)
    alone = sample_lowrank(x_a, post, 64, NoiseSource.from_seeds([11], [2], device=device), "triton")
    merged = sample_lowrank(
        torch.cat([x_b, x_a]), post, 64, NoiseSource.from_seeds([99, 11], [37, 2], device=device), "triton"
    )
    exact = bool(torch.equal(merged[:, 37:], alone))
    return {"check": "triton batch invariance (r=1, integer inputs: bit-exact)", "pass": exact}


# -- timings ------------------------------------------------------------------------------------------------
def cuda_median(fn: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def graph_median(fn: Callable[[], object], iters: int) -> float:
    """Capture ``fn`` (already warmed up, autotuned) in a CUDA graph and time replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return cuda_median(graph.replay, warmup=3, iters=iters)


def device_rates(device: torch.device) -> dict[str, float]:
    """Measured write bandwidth (bytes/s) and TF32 / FP32 matmul rates (flop/s): the floors' denominators."""
    buf = torch.empty(256 * 1024 * 1024, device=device)  # 1 GiB
    t_fill = cuda_median(lambda: buf.fill_(1.0), warmup=3, iters=10)
    src = torch.empty(128 * 1024 * 1024, device=device)
    dst = torch.empty_like(src)
    t_copy = cuda_median(lambda: dst.copy_(src), warmup=3, iters=10)
    a = torch.randn(8192, 8192, device=device)
    b = torch.randn(8192, 8192, device=device)
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        t_tf32 = cuda_median(lambda: a @ b, warmup=2, iters=5)
        torch.backends.cuda.matmul.allow_tf32 = False
        t_fp32 = cuda_median(lambda: a @ b, warmup=2, iters=5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    flops = 2 * 8192**3
    return {
        "write_bytes_per_s": 4 * 256 * 1024 * 1024 / t_fill,
        "copy_bytes_per_s": 2 * 4 * 128 * 1024 * 1024 / t_copy,
        "tf32_flops_per_s": flops / t_tf32,
        "fp32_flops_per_s": flops / t_fp32,
    }


def _time_triton(rec: dict[str, Any], key: str, fn: Callable[[], object], iters: int) -> None:
    rec[f"{key}_s"] = cuda_median(fn, warmup=5, iters=iters)  # the first call autotunes
    try:
        rec[f"{key}_graph_s"] = graph_median(fn, iters)
    except Exception as exc:  # a capture failure must not end the run
        rec[f"{key}_graph_s"] = None
        rec[f"{key}_graph_error"] = repr(exc)[:300]


def timings(
    device: torch.device, deadline: Deadline, rates: dict[str, float], iters: int
) -> list[dict[str, Any]]:
    """S = 512: triton (ieee dots; eager launch and CUDA graph) and the eager schemes, then tf32 dots for the
    1024 layer if time is left (each dot precision is a separate set of compiles)."""
    from model_core.sampling.triton_kernels import PRECISION_ENV, lrt_triton_from_seeds, padded_rank

    records: list[dict[str, Any]] = []
    layers = [("dense-1024", 1024, 1024, 16), ("transformer-256", 256, 256, 16), ("icu-hidden", 128, 128, 15)]
    batches = (1, 4, 16, 64, 256)
    samples = 512
    inputs: dict[tuple[str, int], tuple[Tensor, Tensor, FactorPosterior]] = {}
    os.environ[PRECISION_ENV] = "ieee"
    for name, n, m, r in layers:
        post = random_posterior(m, n, r, device=device)
        for rows in batches:
            if deadline.left() < 40:
                records.append({"layer": name, "batch": rows, "skipped": "time budget"})
                continue
            x = torch.randn(rows, n, device=device)
            seeds = NoiseSource.from_seed(0, rows, device=device).seeds().reshape(-1)
            inputs[(name, rows)] = (x, seeds, post)
            rec: dict[str, Any] = {"layer": name, "m": m, "n": n, "r": r, "batch": rows, "samples": samples}
            out_bytes = 4 * samples * rows * m
            in_bytes = 4 * (rows * n + 2 * r * (m + n) + 2 * m)
            dot_flops = 2 * 2 * samples * rows * padded_rank(r) * m
            rec["memory_floor_s"] = (out_bytes + in_bytes) / rates["write_bytes_per_s"]
            rec["tensor_core_floor_s"] = dot_flops / rates["tf32_flops_per_s"]
            rec["floor_s"] = max(rec["memory_floor_s"], rec["tensor_core_floor_s"])

            def tri(x: Tensor = x, seeds: Tensor = seeds, post: FactorPosterior = post) -> object:
                return lrt_triton_from_seeds(x, post, samples, seeds)

            _time_triton(rec, "triton", tri, iters)
            for backend in ("lrt", "factored", "materialize"):
                if backend == "materialize" and samples * m * n * 4 > 4e9:
                    rec["materialize_s"] = None
                    continue

                def eager(
                    b: str = backend, x: Tensor = x, rows: int = rows, post: FactorPosterior = post
                ) -> object:
                    return sample_lowrank(x, post, samples, NoiseSource.from_seed(3, rows, device=device), b)

                rec[f"{backend}_s"] = cuda_median(eager, warmup=3, iters=max(5, iters // 3))
            best = min(v for v in (rec["triton_s"], rec["triton_graph_s"]) if v)
            rec["best_triton_s"] = best
            rec["factored_over_triton"] = rec["factored_s"] / best
            rec["floor_fraction"] = rec["floor_s"] / best
            records.append(rec)
            torch.cuda.empty_cache()
    os.environ[PRECISION_ENV] = "tf32"
    try:
        for rec in records:
            if rec.get("layer") != "dense-1024" or "best_triton_s" not in rec:
                continue
            if deadline.left() < 60:
                rec["triton_tf32_skipped"] = "time budget"
                continue
            x, seeds, post = inputs[("dense-1024", rec["batch"])]

            def tri32(x: Tensor = x, seeds: Tensor = seeds, post: FactorPosterior = post) -> object:
                return lrt_triton_from_seeds(x, post, samples, seeds)

            _time_triton(rec, "triton_tf32", tri32, iters)
    finally:
        os.environ[PRECISION_ENV] = "ieee"
    return records


def targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rec in records:
        if "best_triton_s" not in rec:
            continue
        if rec["batch"] <= 64:
            out.append(
                {
                    "target": f"{rec['layer']} N={rec['batch']}: factored/triton >= 3",
                    "value": rec["factored_over_triton"],
                    "pass": rec["factored_over_triton"] >= 3.0,
                }
            )
        if rec["batch"] == 256:
            out.append(
                {
                    "target": f"{rec['layer']} N=256: floor/triton >= 0.5",
                    "value": rec["floor_fraction"],
                    "pass": rec["floor_fraction"] >= 0.5,
                }
            )
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"device: {result['device']}"]
    for c in result.get("correctness", []):
        z = c.get("max_z")
        zs = "" if not z else " max z " + " ".join(f"{k}={v:.1f}" for k, v in z.items())
        lines.append(f"{'PASS' if c.get('pass') else 'FAIL'}  {c['check']} {c.get('shape', '')}{zs}")
    head = f"{'layer':<16}{'N':>4}{'triton':>10}{'graph':>10}{'tf32':>10}{'lrt':>10}{'factored':>10}"
    head += f"{'materlz':>10}{'floor':>10}{'fac/tri':>8}{'floor%':>7}"
    lines += ["", "times in ms (S=512, CUDA events, median)", head]

    def ms(v: Any) -> str:
        return "-" if not v else f"{1e3 * v:.3f}"

    for rec in result.get("timings", []):
        if "skipped" in rec:
            lines.append(f"{rec['layer']:<16}{rec['batch']:>4}  skipped: {rec['skipped']}")
            continue
        lines.append(
            f"{rec['layer']:<16}{rec['batch']:>4}{ms(rec.get('triton_s')):>10}{ms(rec.get('triton_graph_s')):>10}"
            f"{ms(rec.get('triton_tf32_s')):>10}{ms(rec.get('lrt_s')):>10}{ms(rec.get('factored_s')):>10}"
            f"{ms(rec.get('materialize_s')):>10}{ms(rec.get('floor_s')):>10}"
            f"{rec['factored_over_triton']:>8.1f}{100 * rec['floor_fraction']:>6.0f}%"
        )
    lines.append("")
    for t in result.get("targets", []):
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']:.2f}")
    for e in result.get("errors", []):
        lines.append(f"ERROR {e['section']}: {e['error'].splitlines()[-1] if e['error'] else ''}")
    lines.append(f"elapsed {result.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", default=os.environ.get("OUT", "gpu_check_out"), help="output folder (default $OUT)"
    )
    p.add_argument("--dry-run", action="store_true", help="no CUDA: CPU reference parts and output only")
    p.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for the whole check")
    p.add_argument("--iters", type=int, default=50, help="timed runs per measurement")
    p.add_argument("--samples", type=int, default=8000, help="Monte Carlo samples of the correctness checks")
    p.add_argument(
        "--aot", action="store_true", help="also compile the kernel for sm_90 ahead of time (no GPU)"
    )
    args = p.parse_args(argv)
    deadline = Deadline(args.budget_s)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: use --dry-run for the CPU-only parts", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    result: dict[str, Any] = {"dry_run": not cuda, "torch": torch.__version__, "errors": []}
    result["device"] = torch.cuda.get_device_name(device) if cuda else "cpu (dry run)"
    result["triton"] = triton.__version__ if HAVE_TRITON else None
    from model_core.sampling.backends import register_triton_backend

    triton_ok = result["triton"] is not None and register_triton_backend()
    result["triton_backend"] = triton_ok

    def section(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            result["errors"].append({"section": name, "error": traceback.format_exc()})
            return None

    samples = args.samples if cuda else min(args.samples, 2000)
    checks: list[dict[str, Any]] = []
    if triton_ok:
        port = section("philox", lambda: philox_port_check(device))
        if port:
            checks.append(port)
    # dry run: the CPU reference parts (lrt against materialize; triton too under TRITON_INTERPRET=1)
    checks += section("correctness", lambda: correctness(device, triton_ok, samples, small=not cuda)) or []
    result["correctness"] = checks
    if args.aot and HAVE_TRITON:
        result["aot"] = section(
            "aot",
            lambda: [
                tk.compile_for_cuda(90, "ieee"),
                tk.compile_for_cuda(90, "tf32"),
                tk.compile_for_cuda(80, "ieee"),
            ],
        )
        for info in result["aot"] or []:
            checks.append(
                {
                    "check": f"compiles for sm_{info['capability']} ({info['precision']})",
                    "pass": info["cubin"],
                }
            )
    if cuda:
        rates = section("rates", lambda: device_rates(device))
        result["rates"] = rates
        if rates:
            result["timings"] = section("timings", lambda: timings(device, deadline, rates, args.iters)) or []
            result["targets"] = targets(result["timings"])
    result["elapsed_s"] = deadline.elapsed()
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    ok = all(c.get("pass") for c in checks) and not result["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
