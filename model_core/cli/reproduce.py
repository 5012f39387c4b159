"""``lrbnn reproduce``: train every method on the paper's tasks and write tables and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_core.cli.common import add_data_dir, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="all", help="icu, air, sentiment or all (default)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument(
        "--first-seed", type=int, default=0, help="first seed (default 0): run a later seed range elsewhere"
    )
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all eight)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, S=16 (for CI)")
    p.add_argument("--no-sweep", action="store_true", help="skip the ICU rank sweep")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild tables and plots from an earlier run in --out"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="with --report-only: first join the partial results of these runs' output directories "
        "into --out (e.g. seeds 0-1 from one process and seed 2 from another)",
    )
    add_data_dir(p)
    p.add_argument("--out", required=True, help="output directory (results.json, results.md, figures/)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model_core.data import TASK_LOADERS, resolve_data_dir
    from model_core.models.spec import Method
    from model_core.reproduce.config import TASKS
    from model_core.reproduce.plots import make_plots
    from model_core.reproduce.report import write_report
    from model_core.reproduce.runner import ensure_spectrum, load_results, merge_results, run_task

    tasks = list(TASKS) if args.task == "all" else [args.task]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        return fail(f"unknown task(s) {unknown}; choose from {sorted(TASKS)} or all")
    out = Path(args.out)
    if args.merge and not args.report_only:
        return fail("--merge needs --report-only")
    if args.report_only:
        for t in tasks if args.merge else []:
            sources = [Path(d) / t for d in args.merge if (Path(d) / t / "results.partial.json").is_file()]
            if sources:
                merge_results(TASKS[t], out / t, sources)
        done = [
            load_results(TASKS[t], out / t) for t in tasks if (out / t / "results.partial.json").is_file()
        ]
        if not done:
            return fail(f"no earlier results under {out}")
        for results in done:
            ensure_spectrum(results, out / results.config.task)
            make_plots(results, out / results.config.task)
        md, js = write_report(done, out)
        print(json.dumps({"results_md": str(md), "results_json": str(js)}))
        return 0
    data_dir = resolve_data_dir(args.data_dir)
    methods = tuple(Method(m) for m in args.methods) if args.methods else None
    all_results = []
    for task in tasks:
        if task not in TASK_LOADERS:
            print(f"lrbnn reproduce: skipping {task}: no loader for it in this build")
            continue
        cfg = TASKS[task]
        if args.no_sweep:
            cfg = replace(cfg, rank_sweep=())
        loader = TASK_LOADERS[task]
        results = run_task(
            cfg,
            lambda seed, _load=loader: _load(data_dir, seed=seed),  # type: ignore[misc]
            args.seeds,
            out / task,
            quick=args.quick,
            methods=methods,
            first_seed=args.first_seed,
        )
        make_plots(results, out / task)
        all_results.append(results)
    md, js = write_report(all_results, out)
    print(json.dumps({"results_md": str(md), "results_json": str(js)}))
    return 0
