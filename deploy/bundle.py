"""Copy a trained checkpoint into the model repository under a serving name and version.

    python deploy/bundle.py RUN/air/checkpoints/lowrank-r16-s0 deploy/models --name pm25-forecast \
        --version 1 --command "lrbnn reproduce --task air --seeds 3 --out RUN"

The weights are copied byte for byte (the manifest's sha256 covers them and is checked again on load);
the manifest gets the serving name and version and records where the checkpoint came from, so
``lrbnn evaluate`` on the bundled copy reproduces exactly the metrics its training run recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.checkpoint import load_checkpoint  # noqa: E402


def bundle(source: Path, repository: Path, name: str, version: str, command: str) -> Path:
    load_checkpoint(source)  # refuse to bundle anything that does not verify
    target = repository / name / version
    if target.exists():
        raise SystemExit(f"{target} exists; remove it first or choose another --version")
    target.mkdir(parents=True)
    shutil.copy2(source / "weights.safetensors", target / "weights.safetensors")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["model_name"], manifest["model_version"] = name, version
    manifest["training"]["command"] = command
    manifest["training"]["bundled_from"] = source.name
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    load_checkpoint(target)  # and prove the copy verifies under its new name
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a checkpoint directory (manifest.json + weights.safetensors)")
    p.add_argument("repository", type=Path, help="the model repository root, e.g. deploy/models")
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="1")
    p.add_argument("--command", required=True, help="the command that trained it (recorded)")
    args = p.parse_args(argv)
    print(bundle(args.source, args.repository, args.name, args.version, args.command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
