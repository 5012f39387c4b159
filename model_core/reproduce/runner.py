"""Run the experiments: every method × seed on a task, a rank sweep and the spectrum check."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from model_core.checkpoint.io import load_checkpoint
from model_core.models.spec import Method
from model_core.predict import Prediction
from model_core.reproduce.config import QUICK, TaskConfig
from model_core.reproduce.spectrum import spectrum_report
from model_core.training.pipeline import TrainOptions, train_checkpoint

SplitLoader = Callable[[int], Any]  # seed -> splits


@dataclass
class RunRecord:
    task: str
    method: str
    seed: int
    rank: int | None
    params: int
    train_seconds: float
    epochs_run: int
    metrics: dict[str, dict[str, float]]
    arrays: str = ""  # npz with the predictions used for the plots

    def metric(self, dotted: str) -> float | None:
        section, _, key = dotted.partition(".")
        value = self.metrics.get(section, {}).get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None  # undefined (e.g. a 0/0 ratio) is shown as missing
        return float(value)


@dataclass
class TaskResults:
    config: TaskConfig
    runs: list[RunRecord] = field(default_factory=list)
    sweep: list[RunRecord] = field(default_factory=list)
    spectrum: list[dict[str, Any]] = field(default_factory=list)
    quick: bool = False


def _options(
    cfg: TaskConfig, method: Method, seed: int, quick: bool, rank: int | None = None
) -> TrainOptions:
    opts = TrainOptions(
        method=method,
        rank=rank or cfg.rank,
        seed=seed,
        epochs=QUICK["epochs"] if quick else cfg.epochs,
        patience=QUICK["patience"] if quick else cfg.patience,
        samples=QUICK["samples"] if quick else cfg.samples,
        progress=False,
        model_name=f"{cfg.task}-{method.value}",
        transformer=dict(cfg.transformer) if cfg.transformer is not None else None,
        kl_warmup=0 if quick else cfg.kl_warmup,
    )
    if cfg.hidden is not None:
        opts.hidden = cfg.hidden
    return opts


def _save_arrays(path: Path, kept: dict[str, Prediction], splits: Any) -> None:
    """The evaluation's predictions on test and OOD, for the reliability/OOD/selective plots."""
    test = kept["test"]
    arrays: dict[str, np.ndarray] = {
        "y_test": np.asarray(splits.y_test),
        "mean": test.mean.numpy(),
        "variance": test.variance.numpy(),
        "score_in": test.ood_score.numpy(),
    }
    if "ood" in kept:
        arrays["score_out"] = kept["ood"].ood_score.numpy()
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def run_one(cfg: TaskConfig, splits: Any, opts: TrainOptions, out: Path) -> RunRecord:
    ckpt_dir = out / "checkpoints" / f"{opts.method.value}-r{opts.rank}-s{opts.seed}"
    kept: dict[str, Prediction] = {}
    manifest = train_checkpoint(splits, opts, ckpt_dir, {"task": cfg.task}, keep=kept)
    assert manifest is not None
    arrays = out / "arrays" / f"{ckpt_dir.name}.npz"
    arrays.parent.mkdir(parents=True, exist_ok=True)
    _save_arrays(arrays, kept, splits)
    metrics = {k: v for k, v in manifest.training.get("metrics", {}).items() if isinstance(v, dict)}
    uses_rank = opts.method in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD)
    return RunRecord(
        task=cfg.task,
        method=opts.method.value,
        seed=opts.seed,
        rank=opts.rank if uses_rank else None,
        params=manifest.parameter_count,
        train_seconds=float(manifest.training.get("train_seconds", 0.0)),
        epochs_run=int(manifest.training.get("epochs_run", 0)),
        metrics=metrics,
        arrays=str(arrays.relative_to(out)),
    )


def sweep_ranks(rank: int, widths: list[int]) -> tuple[int | None, ...]:
    """Factorise every layer the rank fits (r < min(m, n)); the rest stay mean-field."""
    return tuple(rank if rank < min(n, m) else None for n, m in pairwise(widths))


def run_task(
    cfg: TaskConfig,
    load_splits: SplitLoader,
    seeds: int,
    out: Path,
    quick: bool = False,
    methods: tuple[Method, ...] | None = None,
    log: Callable[[str], None] = print,
    first_seed: int = 0,
) -> TaskResults:
    """Seeds ``first_seed .. first_seed + seeds - 1`` of every method (seed-major), then the rank sweep.

    A later seed range can run in another process (another ``out``) and be joined with
    :func:`merge_results`: the 2-core machine then never idles at the end of a long reproduction.
    """
    out.mkdir(parents=True, exist_ok=True)
    results = TaskResults(cfg, quick=quick)
    chosen = methods or cfg.methods
    jobs = [(seed, m) for seed in range(first_seed, first_seed + seeds) for m in chosen]
    cache: dict[int, Any] = {}
    bar = tqdm(jobs, desc=f"reproduce {cfg.task}", unit="run")
    for seed, method in bar:
        bar.set_postfix(method=method.value, seed=seed)
        if seed not in cache:
            cache = {seed: load_splits(seed)}
        start = time.perf_counter()
        rec = run_one(cfg, cache[seed], _options(cfg, method, seed, quick), out)
        results.runs.append(rec)
        log(
            f"{cfg.task} {method.value} seed {seed}: {rec.params} params, {time.perf_counter() - start:.0f} s"
        )
        _checkpoint_results(results, out)
    if cfg.rank_sweep and first_seed == 0:
        splits = load_splits(0)
        widths = [splits.n_features, *(cfg.hidden or ()), 1]
        sweep = cfg.rank_sweep[:2] if quick else cfg.rank_sweep
        for seed in range(1 if quick else seeds):
            for r in tqdm(sweep, desc=f"rank sweep {cfg.task} seed {seed}", unit="rank"):
                opts = _options(cfg, Method.LOWRANK, seed, quick, rank=r)
                opts.ranks = sweep_ranks(r, widths)
                results.sweep.append(run_one(cfg, load_splits(seed) if seed else splits, opts, out / "sweep"))
                _checkpoint_results(results, out)
    ensure_spectrum(results, out)
    _checkpoint_results(results, out)
    return results


def ensure_spectrum(results: TaskResults, out: Path) -> None:
    """The theory check from the seed-0 deterministic checkpoint, if the results lack it (e.g. a run
    stopped before its end, or joined from several processes)."""
    cfg = results.config
    ckpt = out / "checkpoints" / f"deterministic-r{cfg.rank}-s0"
    if not results.spectrum and (ckpt / "manifest.json").is_file():
        results.spectrum = spectrum_report(load_checkpoint(ckpt).model, cfg.rank)


def results_to_json(results: TaskResults) -> dict[str, Any]:
    return {
        "task": results.config.task,
        "samples": QUICK["samples"] if results.quick else results.config.samples,
        "quick": results.quick,
        "runs": [vars(r) for r in results.runs],
        "rank_sweep": [vars(r) for r in results.sweep],
        "spectrum": results.spectrum,
    }


def load_results(cfg: TaskConfig, out: Path) -> TaskResults:
    """Rebuild a task's results from the ``results.partial.json`` a run writes after every model."""
    data = json.loads((out / "results.partial.json").read_text())
    return TaskResults(
        cfg,
        runs=[RunRecord(**r) for r in data["runs"]],
        sweep=[RunRecord(**r) for r in data["rank_sweep"]],
        spectrum=data.get("spectrum", []),
        quick=bool(data.get("quick", False)),
    )


def merge_results(cfg: TaskConfig, out: Path, sources: list[Path]) -> TaskResults:
    """Join the partial results of several runs of one task into ``out`` (runs, sweeps, arrays, checkpoints).

    A run found in two sources (same method, seed and rank) is kept once, from the first source.
    """
    out.mkdir(parents=True, exist_ok=True)
    merged: TaskResults | None = None
    seen: set[tuple[str, int, int | None]] = set()
    seen_sweep: set[tuple[str, int, int | None]] = set()
    for src in sources:
        part = load_results(cfg, src)
        for sub in ("arrays", "checkpoints", "sweep"):
            if (src / sub).is_dir() and src.resolve() != out.resolve():
                shutil.copytree(src / sub, out / sub, dirs_exist_ok=True)
        if merged is None:
            merged = TaskResults(cfg, quick=part.quick, spectrum=part.spectrum)
        merged.spectrum = merged.spectrum or part.spectrum
        _add_unique(merged.runs, part.runs, seen)
        _add_unique(merged.sweep, part.sweep, seen_sweep)
    if merged is None:
        raise ValueError("no sources to merge")
    merged.runs.sort(
        key=lambda r: (r.seed, cfg.methods.index(Method(r.method)) if Method(r.method) in cfg.methods else 99)
    )
    _checkpoint_results(merged, out)
    return merged


def _add_unique(
    target: list[RunRecord], records: list[RunRecord], seen: set[tuple[str, int, int | None]]
) -> None:
    for rec in records:
        key = (rec.method, rec.seed, rec.rank)
        if key not in seen:
            seen.add(key)
            target.append(rec)


def _checkpoint_results(results: TaskResults, out: Path) -> None:
    """Write partial results after every run, so a long reproduction can be inspected or resumed."""
    (out / "results.partial.json").write_text(json.dumps(results_to_json(results), indent=1, default=float))
