"""Regenerate the README's curl examples: start ``lrbnn serve`` on the bundled models, run every curl
command for real, and write the commands with their answers between the README's example markers.

    .venv/bin/python deploy/examples.py            # rewrites README.md's examples block
    .venv/bin/python deploy/examples.py --print    # prints the block instead

Long answers are cut at ``--width`` characters (marked ``…``); the cut never changes what is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- examples:start -->", "<!-- examples:end -->"
ADMIN = "admin-secret"

ICU = {
    "age": 71.5, "sex": "male", "meanbp": 58, "hrt": 124, "resp": 32, "temp": 38.9,
    "crea": 2.4, "bun": 48, "sod": 131, "ph": 7.28, "scoma": 26, "alb": 2.1,
}  # fmt: skip
#: request bodies too long to show inline (a 24-hour window), sent with ``-d @file`` from the repo root
WINDOW, SHORT_WINDOW = "deploy/examples/pm25-window.json", "deploy/examples/pm25-short-window.json"
FHIR_BUNDLE, CDS_REQUEST = "deploy/examples/fhir-bundle.json", "deploy/examples/cds-patient-view.json"
GRPC_CLIENT = "deploy/examples/grpc_client.py"
REVIEW = "A gripping, beautifully acted film that never lets go."
PAN = "An utterly boring, lifeless mess of a film."
HEADLINE = "Chancellor unveils emergency budget as inflation hits 40-year high"


#: issue #14's example: a patient whose chart sent temp in °F and creatinine in µmol/L
UNIT_ERRORS = {"age": 71.5, "sex": "male", "temp": 102.2, "crea": 212, "bun": 48}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def examples(base: str, grpc: str) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(title, curl arguments (or a ``python`` command), line prefixes to keep (all lines when empty)),
    in README order."""
    post = ["-X", "POST", "-H", "Content-Type: application/json"]

    def body(payload: object) -> list[str]:
        return ["-d", json.dumps(payload, separators=(",", ":"))]

    v1 = f"{base}/v1/models"
    v2 = f"{base}/v2/models"
    return [
        ("liveness", [f"{base}/livez"], ()),
        ("readiness", [f"{base}/readyz"], ()),
        ("models and their input schemas", [v1], ()),
        (
            "tabular: an ICU patient (named features, raw units; missing ones imputed and listed)",
            [
                *post,
                f"{v1}/icu-mortality:predict",
                *body({"instances": [ICU], "parameters": {"samples": 200, "seed": 7}}),
            ],
            (),
        ),
        (
            "a patient sent with temperature in °F and creatinine in µmol/L: flagged, and why",
            [
                *post,
                f"{v1}/icu-mortality:predict",
                *body({"instances": [UNIT_ERRORS], "parameters": {"samples": 200, "seed": 7}}),
            ],
            (),
        ),
        (
            "an outcome, days later: send back the answer's prediction_id (an id never answered is unknown)",
            [
                *post,
                f"{v1}/icu-mortality/feedback",
                *body({"outcomes": [{"prediction_id": "0" * 32, "value": "died"}]}),
            ],
            (),
        ),
        (
            "FHIR R4: a Bundle (Patient + LOINC Observations in °F, µmol/L, mmHg) -> a RiskAssessment",
            [
                "-X",
                "POST",
                "-H",
                "Content-Type: application/fhir+json",
                f"{v1}/icu-mortality:predict-fhir?samples=200&seed=7",
                "-d",
                f"@{FHIR_BUNDLE}",
            ],
            (),
        ),
        (
            "CDS Hooks: a patient-view call with its prefetch -> a card (its uuid is the prediction_id)",
            [*post, f"{base}/cds-services/icu-mortality", "-d", f"@{CDS_REQUEST}"],
            (),
        ),
        (
            "Open Inference Protocol over gRPC (port LRBNN_GRPC_PORT, 8001) with tritonclient.grpc",
            ["python", GRPC_CLIENT, "--url", grpc],
            (),
        ),
        (
            "sequence: the last 24 hours of Beijing weather and PM2.5 (oldest first) -> next-hour PM2.5",
            [*post, f"{v1}/pm25-forecast:predict", "-d", f"@{WINDOW}"],
            (),
        ),
        (
            "text: a glowing and a damning review snippet, and a news headline (out of distribution)",
            [
                *post,
                f"{v1}/review-sentiment:predict",
                *body(
                    {
                        "instances": [{"text": REVIEW}, {"text": PAN}, {"text": HEADLINE}],
                        "parameters": {"seed": 7},
                    }
                ),
            ],
            (),
        ),
        (
            "an unknown model: 404, and no new metric series",
            [*post, f"{v1}/nope:predict", *body({"instances": [{}]}), "-w", r"  HTTP %{http_code}\n"],
            (),
        ),
        (
            "a bad input names its field",
            [
                *post,
                f"{v1}/pm25-forecast:predict",
                "-d",
                f"@{SHORT_WINDOW}",
                "-w",
                r"  HTTP %{http_code}\n",
            ],
            (),
        ),
        (
            "hot reload (admin token; the new version is verified before it is swapped in)",
            [*post, "-H", f"Authorization: Bearer {ADMIN}", f"{v1}/icu-mortality/reload"],
            (),
        ),
        ("V2 server metadata", [f"{base}/v2"], ()),
        ("V2 liveness", [f"{base}/v2/health/live"], ()),
        ("V2 readiness", [f"{base}/v2/health/ready"], ()),
        ("V2 model metadata", [f"{v2}/review-sentiment"], ()),
        ("V2 model readiness", [f"{v2}/pm25-forecast/versions/1/ready"], ()),
        (
            "V2 inference (a BYTES tensor of raw text)",
            [
                "-X",
                "POST",
                f"{v2}/review-sentiment/infer",
                *body(
                    {
                        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [REVIEW]}],
                        "parameters": {"seed": 7},
                    }
                ),
            ],
            (),
        ),
        (
            "Prometheus metrics (the drift and OOD-rate series of one model)",
            [f"{base}/metrics"],
            ('lrbnn_uncertainty_drift{model="pm25-forecast"', 'lrbnn_ood_rate{model="pm25-forecast"'),
        ),
    ]


def _shown(args: list[str], base: str, grpc: str) -> str:
    """The command as a reader types it (localhost:8000, gRPC localhost:8001)."""
    if args[0] == "python":
        return " ".join([".venv/bin/python", *(a.replace(grpc, "localhost:8001") for a in args[1:])])
    words = ["curl", "-s", *(a.replace(base, "localhost:8000") for a in args)]
    return " ".join(shlex.quote(w) if any(ch in w for ch in ' {"&?') else w for w in words)


def run(repo: Path, width: int) -> str:
    port, grpc_port = _free_port(), _free_port()
    base, grpc = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    env = {
        **os.environ,
        "LRBNN_ADMIN_TOKEN": ADMIN,
        "LRBNN_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
        "LRBNN_GRPC_PORT": str(grpc_port),
    }
    cmd = [
        str(Path(sys.executable).with_name("lrbnn")),
        "serve",
        "--model-repository",
        str(repo),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.5)
        blocks = []
        for title, args, grep in examples(base, grpc):
            command = [sys.executable, *args[1:]] if args[0] == "python" else ["curl", "-s", *args]
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            if grep:
                out = "\n".join(line for line in out.splitlines() if line.startswith(grep))
            out = out.strip()
            cut = "\n".join(line if len(line) <= width else line[:width] + " …" for line in out.splitlines())
            shown = _shown(args, base, grpc)
            if grep:
                pattern = "^(" + "|".join(g.replace("{", "\\{") for g in grep) + ")"
                shown += " | grep -E " + shlex.quote(pattern)
            blocks.append(f"# {title}\n$ {shown}\n{cut}")
        return "```console\n" + "\n\n".join(blocks) + "\n```"
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=ROOT / "deploy" / "models")
    p.add_argument("--width", type=int, default=600)
    p.add_argument("--print", action="store_true", help="print the block instead of rewriting README.md")
    args = p.parse_args(argv)
    block = run(args.model_repository, args.width)
    if args.print:
        print(block)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    print(f"rewrote the examples in {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
