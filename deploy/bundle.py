"""Copy a trained checkpoint into the model repository under a serving name and version.

    python deploy/bundle.py RUN/air/checkpoints/lowrank-r16-s0 deploy/models --name pm25-forecast \
        --version 1 --command "lrbnn reproduce --task air --seeds 3 --out RUN"

The weights are copied byte for byte (the manifest's sha256 covers them and is checked again on load);
the manifest gets the serving name and version and records where the checkpoint came from, so
``lrbnn evaluate`` on the bundled copy reproduces the metrics its training run recorded.

``--check-rows N --data-dir D`` also records ``training.check``: the metrics of ``lrbnn evaluate --rows
N`` (N evenly spaced rows of each evaluated split), which ``make test`` reproduces instead of the full
evaluation for a model too slow to evaluate whole in CI. ``--record-check DIR`` records it for a model
already in the repository (the weights are not touched):

    python deploy/bundle.py --record-check deploy/models/review-sentiment/1 --check-rows 300 \
        --data-dir ../shared/data

``--record-feature-reference DIR`` adds ``drift_reference.features`` (each input feature's training
distribution, the reference of the served ``lrbnn_feature_drift`` gauges; a text model's token length
and unknown-token rate) to a model bundled before training stored it, from the very training split it
was trained on (weights untouched):

    python deploy/bundle.py --record-feature-reference deploy/models/icu-mortality/1 --data-dir ../shared/data

``--record-codings DIR`` adds each input feature's FHIR coding (LOINC or local code, canonical UCUM unit,
molar mass; ``model_core.data.coding``) to a tabular model bundled before its task's loader attached
them (metadata only: weights and every answer unchanged):

    python deploy/bundle.py --record-codings deploy/models/icu-mortality/1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.checkpoint import load_checkpoint  # noqa: E402
from model_core.data.coding import FeatureCoding  # noqa: E402
from model_core.novelty import NOVELTY_FILE  # noqa: E402


def update_manifest(target: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to a bundled model's manifest and write it back (the weights are not touched),
    then prove it still verifies; returns the new manifest."""
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    load_checkpoint(target)
    return manifest


def record_check(target: Path, data_dir: str | None, rows: int, seed: int = 0) -> dict[str, Any]:
    """Evaluate the bundled model on ``rows`` rows of each split and record it as ``training.check``."""
    import argparse as _argparse

    from model_core.cli.common import load_task_splits
    from model_core.evaluation import evaluate_checkpoint

    ckpt = load_checkpoint(target)
    meta = dict(ckpt.manifest.training)
    splits = load_task_splits(_argparse.Namespace(data_dir=data_dir, task=meta.get("task")), meta)
    report = evaluate_checkpoint(ckpt, splits, seed=seed, rows=rows)
    check = {
        "command": f"lrbnn evaluate {target} --rows {rows} --seed {seed} --json",
        "rows": rows,
        "seed": seed,
        "samples": report["samples"],
        "metrics": {k: v for k, v in report.items() if k in ("test", "conformal") or k.startswith("ood")},
    }
    update_manifest(target, lambda m: m["training"].update(check=check))
    return check


def record_feature_reference(target: Path, data_dir: str | None) -> int:
    """Compute and record ``drift_reference.features`` from the training split; returns the feature count
    (the same computation as training, ``model_core.training.pipeline.feature_reference``)."""
    import argparse as _argparse

    from model_core.cli.common import load_task_splits
    from model_core.training.pipeline import feature_reference

    ckpt = load_checkpoint(target)
    meta = dict(ckpt.manifest.training)
    splits = load_task_splits(_argparse.Namespace(data_dir=data_dir, task=meta.get("task")), meta)
    refs = feature_reference(splits)
    features = [r.model_dump(mode="json", exclude_none=True) for r in refs]
    update_manifest(target, lambda m: m["drift_reference"].update(features=features))
    return len(refs)


def task_codings(task: str) -> Mapping[str, FeatureCoding]:
    """The codings the task's loader attaches at training time (tasks without codes: none)."""
    from model_core.data.icu import ICU_CODINGS

    registry: dict[str, Mapping[str, FeatureCoding]] = {"icu": ICU_CODINGS}
    if task not in registry:
        raise SystemExit(f"task {task!r} has no feature codings (known: {sorted(registry)})")
    return registry[task]


def record_codings(target: Path) -> int:
    """Attach the task's feature codings to a bundled tabular model; returns how many were attached."""
    ckpt = load_checkpoint(target)
    codings = task_codings(str(ckpt.manifest.training.get("task")))

    def attach(manifest: dict[str, Any]) -> None:
        for feature in manifest["input_schema"]["preprocessing"]["features"]:
            if feature["name"] in codings:
                feature["coding"] = codings[feature["name"]].model_dump(mode="json", exclude_none=True)

    features = update_manifest(target, attach)["input_schema"]["preprocessing"]["features"]
    return sum("coding" in f for f in features)


def bundle(source: Path, repository: Path, name: str, version: str, command: str) -> Path:
    load_checkpoint(source)  # refuse to bundle anything that does not verify
    target = repository / name / version
    if target.exists():
        raise SystemExit(f"{target} exists; remove it first or choose another --version")
    target.mkdir(parents=True)
    shutil.copy2(source / "weights.safetensors", target / "weights.safetensors")
    if (source / NOVELTY_FILE).is_file():  # the novelty detector, its sha256 in the manifest
        shutil.copy2(source / NOVELTY_FILE, target / NOVELTY_FILE)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["model_name"], manifest["model_version"] = name, version
    manifest["training"]["command"] = command
    manifest["training"]["bundled_from"] = source.name
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    load_checkpoint(target)  # and prove the copy verifies under its new name
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "source", type=Path, nargs="?", help="a checkpoint directory (manifest.json + weights.safetensors)"
    )
    p.add_argument("repository", type=Path, nargs="?", help="the model repository root, e.g. deploy/models")
    p.add_argument("--name")
    p.add_argument("--version", default="1")
    p.add_argument("--command", help="the command that trained it (recorded)")
    p.add_argument(
        "--check-rows", type=int, default=None, metavar="N", help="record training.check on N rows"
    )
    p.add_argument(
        "--data-dir", default=None, help="data directory for --check-rows (default: $LRBNN_DATA_DIR)"
    )
    p.add_argument("--record-check", type=Path, default=None, metavar="DIR", help="an already bundled model")
    p.add_argument(
        "--record-feature-reference",
        type=Path,
        default=None,
        metavar="DIR",
        help="record drift_reference.features in an already bundled model",
    )
    p.add_argument(
        "--record-codings",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the task's FHIR feature codings in an already bundled model",
    )
    args = p.parse_args(argv)
    if args.record_codings is not None:
        print(record_codings(args.record_codings))
        return 0
    if args.record_feature_reference is not None:
        print(record_feature_reference(args.record_feature_reference, args.data_dir))
        return 0
    if args.check_rows is not None and args.check_rows <= 0:
        p.error("--check-rows must be positive")
    if args.record_check is not None:
        if args.check_rows is None:
            p.error("--record-check needs --check-rows N")
        print(json.dumps(record_check(args.record_check, args.data_dir, args.check_rows)))
        return 0
    if args.source is None or args.repository is None or not args.name or not args.command:
        p.error("bundling needs SOURCE REPOSITORY --name NAME --command CMD")
    target = bundle(args.source, args.repository, args.name, args.version, args.command)
    if args.check_rows is not None:
        record_check(target, args.data_dir, args.check_rows)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
