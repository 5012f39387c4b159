"""PNG plots: reliability diagrams, OOD-score histograms, selective-prediction curves, spectra, rank sweep."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from model_core.metrics import reliability_curve, selective_curve
from model_core.reproduce.runner import TaskResults


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seed0(results: TaskResults, out: Path) -> dict[str, dict[str, np.ndarray]]:
    arrays = {}
    for r in results.runs:
        if r.seed == 0 and r.arrays:
            with np.load(out / r.arrays) as data:
                arrays[r.method] = {k: data[k] for k in data.files}
    return arrays


def make_plots(results: TaskResults, out: Path) -> list[Path]:
    plt = _plt()
    task = results.config.task
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    arrays = _seed0(results, out)
    written: list[Path] = []
    classification = results.config.task != "air"

    if classification and arrays:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for method, a in arrays.items():
            curve = reliability_curve(a["mean"], a["y_test"])
            keep = curve.counts > 0
            ax.plot(curve.confidence[keep], curve.accuracy[keep], marker="o", ms=3, label=method)
        ax.set(xlabel="confidence", ylabel="accuracy", title=f"{task}: reliability (15 bins)")
        ax.legend(fontsize=7)
        written.append(_save(fig, figs / f"{task}_reliability.png", plt))

    ood = {m: a for m, a in arrays.items() if "score_out" in a}
    if ood:
        n = len(ood)
        fig, axes = plt.subplots(1, n, figsize=(3 * n, 2.6), squeeze=False)
        for ax, (method, a) in zip(axes[0], ood.items(), strict=True):
            hi = float(np.quantile(np.concatenate([a["score_in"], a["score_out"]]), 0.99)) or 1.0
            bins = np.linspace(0, hi, 30)
            ax.hist(a["score_in"], bins=bins, alpha=0.6, density=True, label="in")
            ax.hist(a["score_out"], bins=bins, alpha=0.6, density=True, label="OOD")
            ax.set_title(method, fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{task}: OOD score, in vs out")
        written.append(_save(fig, figs / f"{task}_ood_hist.png", plt))

    if arrays:
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, a in arrays.items():
            if classification:
                err = ((a["mean"] >= 0.5).astype(int) != a["y_test"]).astype(float)
            else:
                err = np.abs(a["mean"] - a["y_test"])
            retention, risk = selective_curve(err, a["variance"])
            ax.plot(retention, risk, label=method)
        ax.set(xlabel="retention", ylabel="error" if classification else "MAE", xlim=(0.5, 1.0))
        ax.set_title(f"{task}: selective prediction")
        ax.legend(fontsize=7)
        written.append(_save(fig, figs / f"{task}_selective.png", plt))

    if results.spectrum:
        fig, ax = plt.subplots(figsize=(5, 4))
        for row in results.spectrum:
            s = np.asarray(row["singular_values"])
            ax.semilogy(np.arange(1, len(s) + 1), s, label=f"{row['layer']} {row['shape']}")
            ax.axvline(row["rank_used"], color="grey", ls=":", lw=1)
        ax.set(xlabel="index i", ylabel="σ_i", title=f"{task}: spectra of trained dense weights")
        ax.legend(fontsize=7)
        written.append(_save(fig, figs / f"{task}_spectrum.png", plt))

    if results.sweep:
        by_rank: dict[int, list[float]] = defaultdict(list)
        params: dict[int, int] = {}
        for r in results.sweep:
            v = r.metric("ood.ood_auroc")
            if v is not None and r.rank is not None:
                by_rank[r.rank].append(v)
                params[r.rank] = r.params
        if by_rank:
            ranks = sorted(by_rank)
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.errorbar(
                [params[k] for k in ranks],
                [float(np.mean(by_rank[k])) for k in ranks],
                yerr=[float(np.std(by_rank[k])) for k in ranks],
                marker="o",
            )
            for k in ranks:
                ax.annotate(f"r={k}", (params[k], float(np.mean(by_rank[k]))), fontsize=7)
            ax.set(xscale="log", xlabel="parameters", ylabel="OOD AUROC", title=f"{task}: rank sweep")
            written.append(_save(fig, figs / f"{task}_rank_sweep.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
