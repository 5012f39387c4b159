#!/usr/bin/env python3
"""Container smoke test: build the images, run them, compare their answers with the host's, then compose.

Why: hadolint and compose validation cannot tell whether an image starts and serves; this does,
wherever a Docker engine is reachable. It builds what it needs: where no image registry answers it makes
a local Debian base with mmdebstrap and a wheelhouse with ``pip download`` (``make wheelhouse``), both
cached outside the repository (``--cache``), so the build itself needs no network. Then, for the CPU
image and the slim torch-free image:

* ``/readyz`` within ``--timeout`` s (the time is reported), under ``--read-only`` with a tmpfs ``/tmp``;
* 401 without a token, 200 with it; the image without any token refuses to start (secure by default);
* V1 and V2 answers equal those of ``lrbnn serve`` on the host for the same request and seed (the slim
  image against the host's ONNX backend on the very ``model.onnx`` the image carries);
* ``/metrics`` open and complete; the ``HEALTHCHECK`` reaches ``healthy``; pid 1 runs as a non-root
  uid; the root file system refuses a write; for slim, torch cannot be imported;
* ``docker stop`` drains: a request in flight at the stop is answered 200 and the exit status is 0.

Then ``docker-compose`` (the repository's file plus ``deploy/compose.local.yml`` where no registry
answers: Prometheus from Debian's package) starts the service and Prometheus; Prometheus must report the
target ``up``, load the repository's rule groups, and count the predictions just made.

Prints one JSON line (``{"container_test": ...}``) and ``SMOKE-TEST STATUS: PASSED|FAILED|NOT RUN``.
Where no engine is reachable (or no base image can be had) it reports "not run" with the reason and
exits 0, so the suite stays green and honest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
STATUS_PREFIX = "SMOKE-TEST STATUS:"
REQUIRED_METRICS = (
    "lrbnn_request_duration_seconds",
    "lrbnn_predictions_total",
    "lrbnn_model_info",
    "lrbnn_uncertainty_drift",
    "lrbnn_ood_rate",
)
PREDICTION_KEYS = ("mean", "variance", "epistemic", "ood_score", "ood")
#: Fields that differ between any two answers by design (fresh, unguessable per prediction).
VOLATILE_KEYS = frozenset({"prediction_id"})
OFFICIAL_BASE = "python:3.12.8-slim-bookworm"
LOCAL_BASE = "lrbnn-base:bookworm-python3"
LOCAL_PROMETHEUS_BASE = "lrbnn-prometheus-base:bookworm"
PROMETHEUS_DEBIAN_IMAGE = "debian:bookworm-slim"
PROMETHEUS_IMAGE = "lrbnn-prometheus:debian"
TORCH_SPEC = "torch==2.13.0"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lrbnn-container"
COMPOSE_PROJECT = "lrbnn-container-test"
#: What the images need, for `pip download` into the wheelhouse (torch pinned: the CPU wheel).
WHEEL_REQUIREMENTS = (TORCH_SPEC, ".[serve,onnx]", "setuptools>=68", "wheel")


class NotRunnable(RuntimeError):
    """The smoke test cannot run on this machine; ``summary`` says why in a few words, the text the detail."""

    summary = "cannot run here"


class EngineUnavailable(NotRunnable):
    """No Docker engine can be reached (or the docker CLI is missing)."""

    summary = "no Docker engine reachable"


class RegistryUnavailable(NotRunnable):
    """A base image the build needs is not present locally, no registry answers, and none can be made."""

    summary = "no image registry reachable"


def version() -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise ValueError("pyproject.toml has no version")
    return found.group(1)


def image_tags(name: str = "lrbnn") -> dict[str, str]:
    """The tags `make image` and this test build: ``<name>:<version>-<flavour>`` (the Kubernetes
    manifests reference these)."""
    v = version()
    return {"cpu": f"{name}:{v}-cpu", "slim": f"{name}:{v}-slim", "cuda": f"{name}:{v}-cuda"}


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--images", default="cpu,slim", help="comma-separated: cpu, slim")
    p.add_argument("--no-build", action="store_true", help="use the images already tagged")
    p.add_argument("--build-only", action="store_true", help="build (make image) and stop")
    p.add_argument("--no-compose", action="store_true", help="skip the compose + Prometheus check")
    p.add_argument("--base", default=None, help="base image (default: official, else a local mmdebstrap one)")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="base tarballs and wheels, kept between runs"
    )
    p.add_argument("--image-repo", default="lrbnn", help="image name; tags <name>:<version>-cpu|slim")
    p.add_argument("--model", default="icu-mortality")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /readyz")
    p.add_argument("--keep", action="store_true", help="do not remove containers (debugging)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    images = [s.strip() for s in args.images.split(",") if s.strip()]
    bad = [s for s in images if s not in {"cpu", "slim"}]
    if bad or not images:
        p.error(f"--images takes cpu and/or slim, got {args.images!r}")
    args.images = images
    return args


# ---------------------------------------------------------------------------------------------- HTTP
def http(
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """GET (or POST of ``body`` as JSON) returning (status, body); HTTP errors are returned, connection
    errors raised."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return http(url, timeout=timeout)


def wait_ready(
    url: str,
    timeout: float,
    interval: float = 0.5,
    get: Callable[[str], tuple[int, bytes]] = http_get,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll `url` until it answers 200; return seconds waited, raise TimeoutError after `timeout`."""
    start = clock()
    last = "no answer"
    while True:
        try:
            status, _ = get(url)
            if status == 200:
                return clock() - start
            last = f"HTTP {status}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if clock() - start >= timeout:
            raise TimeoutError(f"{url} not ready after {timeout:.0f}s (last: {last})")
        sleep(interval)


# -------------------------------------------------------------------------------------------- checks
def check_prediction(doc: Any, n_instances: int, model: str) -> list[str]:
    """Problems with a :predict answer (empty list when it is fine)."""
    if not isinstance(doc, dict):
        return ["answer is not a JSON object"]
    problems = []
    if doc.get("model_name") != model:
        problems.append(f"model_name is {doc.get('model_name')!r}, expected {model!r}")
    preds = doc.get("predictions")
    if not isinstance(preds, list) or len(preds) != n_instances:
        return [*problems, f"expected {n_instances} predictions, got {preds!r:.200}"]
    for i, p in enumerate(preds):
        missing = [k for k in PREDICTION_KEYS if k not in p]
        if missing:
            problems.append(f"prediction {i} lacks {missing}")
            continue
        if not 0.0 <= float(p["mean"]) <= 1.0:
            problems.append(f"prediction {i} mean {p['mean']} outside [0, 1]")
        if float(p["variance"]) < 0 or float(p["epistemic"]) < 0:
            problems.append(f"prediction {i} has a negative variance")
    return problems


def check_metrics(text: str, model: str) -> list[str]:
    """Problems with the /metrics exposition: required families present and labelled with the model."""
    problems = []
    for name in REQUIRED_METRICS:
        if not any(line.startswith(name) and f'model="{model}"' in line for line in text.splitlines()):
            problems.append(f"/metrics lacks a {name} sample for model {model!r}")
    return problems


def counter_value(text: str, name: str, model: str) -> float:
    """Sum of a counter's samples for ``model`` in a Prometheus exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line and not line.startswith(f"{name}_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _without_volatile(items: list[Any]) -> list[Any]:
    return [x for x in items if not (isinstance(x, dict) and x.get("name") in VOLATILE_KEYS)]


def diff_answers(a: Any, b: Any, where: str = "", tol: float = 1e-6) -> list[str]:
    """Where two JSON answers differ, floats within ``tol`` (absolute, or relative for large values)
    and the fields in ``VOLATILE_KEYS`` ignored (a V1 key, or a V2 output of that name); at most a few
    paths are listed."""
    out: list[str] = []
    if isinstance(a, list) and isinstance(b, list):
        a, b = _without_volatile(a), _without_volatile(b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in VOLATILE_KEYS:
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'the first' if key in a else 'the second'}")
            else:
                out += diff_answers(a[key], b[key], f"{where}.{key}", tol)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items vs {len(b)}"]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += diff_answers(x, y, f"{where}[{i}]", tol)
    elif (
        isinstance(a, float | int)
        and isinstance(b, float | int)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        if not math.isclose(a, b, rel_tol=tol, abs_tol=tol):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b or isinstance(a, bool) != isinstance(b, bool):
        out.append(f"{where}: {a!r:.80} vs {b!r:.80}")
    return out[:8]


def example_instance(manifest: dict[str, Any]) -> dict[str, Any]:
    """A valid instance: every tabular feature at its imputation value."""
    feats = manifest.get("input_schema", {}).get("preprocessing", {}).get("features", [])
    return {f["name"]: f["impute"] for f in feats if f.get("impute") is not None}


def v2_request(
    meta: dict[str, Any], instances: list[dict[str, Any]], seed: int, samples: int
) -> dict[str, Any]:
    """An Open Inference Protocol request for tabular ``instances``, from the model's V2 metadata:
    one tensor [N, F] in ``feature_names`` order, categories as their index."""
    tensor = meta["inputs"][0]
    names = meta["parameters"]["feature_names"]
    cats = meta["parameters"].get("categories", {})
    rows = [
        [float(cats[n].index(inst[n])) if n in cats else float(inst[n]) for n in names] for inst in instances
    ]
    return {
        "inputs": [
            {
                "name": tensor["name"],
                "datatype": tensor["datatype"],
                "shape": [len(rows), len(names)],
                "data": [v for row in rows for v in row],
            }
        ],
        "parameters": {"samples": samples, "seed": seed},
    }


# -------------------------------------------------------------------------------------------- docker
def docker(
    *args: str, timeout: float = 600, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a failure raises RuntimeError with its stderr's last lines."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-6:]
        raise RuntimeError(f"docker {' '.join(args[:3])} failed ({res.returncode}): " + " | ".join(tail))
    return res


def connect() -> str:
    """The engine's version, else EngineUnavailable with the reason."""
    if shutil.which("docker") is None:
        raise EngineUnavailable("docker CLI not installed (apt-get install docker.io)")
    try:
        res = docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineUnavailable("docker version timed out after 20 s") from exc
    if res.returncode != 0:
        reason = (res.stderr.strip().splitlines() or ["no answer"])[-1][:300]
        raise EngineUnavailable(reason)
    return res.stdout.strip()


def image_present(name: str) -> bool:
    return docker("image", "inspect", name, check=False, timeout=30).returncode == 0


def pullable(name: str, timeout: float = 90) -> str | None:
    """None when ``name`` is present or could be pulled, else the reason it could not."""
    if image_present(name):
        return None
    try:
        res = docker("pull", "-q", name, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"docker pull {name} timed out after {timeout:.0f} s"
    if res.returncode == 0:
        return None
    return (res.stderr.strip().splitlines() or ["failed"])[-1][:300]


def local_debian_image(tag: str, packages: list[str], cache: Path) -> str:
    """``tag`` made from Debian's packages (mmdebstrap minbase, docker import); the tarball is cached
    in ``cache`` so a machine whose engine lost its images re-imports in seconds."""
    if image_present(tag):
        return "present"
    tar = cache / f"{tag.replace(':', '-').replace('/', '_')}.tar"
    how = "imported from cache"
    if tar.is_dir():  # an earlier run's mmdebstrap wrote a directory there (it guesses the format)
        shutil.rmtree(tar)
    if not tar.exists():
        if shutil.which("mmdebstrap") is None:
            raise RegistryUnavailable(
                f"cannot make {tag}: mmdebstrap not installed (apt-get install mmdebstrap)"
            )
        cache.mkdir(parents=True, exist_ok=True)
        # the format explicitly: mmdebstrap otherwise guesses it from the name, and "x.part" is a directory
        part = tar.with_name(tar.stem + ".part.tar")
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            f"--include={','.join(packages)}",
            "bookworm",
            str(part),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            if part.is_dir():
                shutil.rmtree(part)
            part.unlink(missing_ok=True)
            raise RegistryUnavailable(f"mmdebstrap for {tag} failed: {res.stderr.strip()[-300:]}")
        part.rename(tar)
        how = "made with mmdebstrap"
    with tar.open("rb") as fh:
        docker("import", "-", tag, stdin=fh, timeout=600)
    return how


def container_python(image: str) -> str:
    res = docker(
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        image,
        "-c",
        "import sys; print('%d.%d' % sys.version_info[:2])",
        timeout=120,
    )
    return res.stdout.strip()


def fill_wheelhouse(base: str, cache: Path, dest: Path) -> dict[str, Any]:
    """``pip download`` what the images need into ``cache/wheels`` (skipped when pyproject.toml and the
    requirements are unchanged since the last download) and link it into ``dest`` (the wheelhouse of the
    build context). The wheels are this interpreter's: refuse a base with another Python."""
    host = "{}.{}".format(*sys.version_info[:2])
    inside = container_python(base)
    if inside != host:
        raise RuntimeError(
            f"the wheelhouse is downloaded for this Python ({host}) but {base} has Python {inside}: run with "
            f"a python{inside}, or pass --base with a Python {host} image"
        )
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stamp_text = json.dumps([(REPO_ROOT / "pyproject.toml").read_text(), WHEEL_REQUIREMENTS, host])
    stamp = wheels / ".stamp"
    start = time.monotonic()
    downloaded = False
    if not stamp.exists() or stamp.read_text() != stamp_text or not any(wheels.glob("*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *WHEEL_REQUIREMENTS]
        res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(f"pip download failed: {res.stderr.strip()[-500:]}")
        stamp.write_text(stamp_text)
        downloaded = True
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in wheels.glob("*.whl")}
    for old in dest.glob("*.whl"):
        if old.name not in wanted:
            old.unlink()
    for name in sorted(wanted):
        target = dest / name
        if not target.exists():
            try:
                os.link(wheels / name, target)
            except OSError:  # another file system: copy
                shutil.copy2(wheels / name, target)
    size = sum((dest / n).stat().st_size for n in wanted)
    return {
        "wheels": len(wanted),
        "mb": round(size / 1e6),
        "downloaded": downloaded,
        "s": round(time.monotonic() - start, 1),
    }


def resolve_base(args: argparse.Namespace, report: dict[str, Any]) -> tuple[str, bool]:
    """(base image, local?) : the official base where present or pullable, else a local Debian one."""
    if args.base:
        return args.base, args.base != OFFICIAL_BASE
    why = pullable(OFFICIAL_BASE)
    if why is None:
        report["base"] = {"image": OFFICIAL_BASE, "how": "registry"}
        return OFFICIAL_BASE, False
    start = time.monotonic()
    how = local_debian_image(LOCAL_BASE, ["python3", "python3-venv", "ca-certificates"], args.cache)
    report["base"] = {
        "image": LOCAL_BASE,
        "how": how,
        "s": round(time.monotonic() - start, 1),
        "registry": why[:160],
    }
    return LOCAL_BASE, True


def build_images(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, str]:
    """Build the requested images with the classic builder; their tags. Sizes and times go in ``report``."""
    tags = image_tags(args.image_repo)
    base, local = resolve_base(args, report)
    build_args = ["--build-arg", f"PYTHON_IMAGE={base}"]
    if local:
        report["wheelhouse"] = fill_wheelhouse(base, args.cache, REPO_ROOT / "deploy" / "wheelhouse")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    built: dict[str, str] = {}
    # slim first: the classic builder builds every stage before the target, so the CPU build after it
    # finds the builder stages cached and its own time is what `make image` takes once warm
    for flavour in sorted(args.images, key=lambda f: f != "slim"):
        start = time.monotonic()
        target = ["--target", flavour]
        docker(
            "build", "-q", *build_args, *target, "-t", tags[flavour], str(REPO_ROOT), env=env, timeout=1800
        )
        report.setdefault("images", {})[flavour] = {
            "tag": tags[flavour],
            "build_s": round(time.monotonic() - start, 1),
        }
        built[flavour] = tags[flavour]
    return built


def image_size_mb(tag: str) -> float:
    return round(int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()) / 1e6, 1)


# -------------------------------------------------------------------------------------- host servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def host_server(repo: Path, env: dict[str, str], timeout: float) -> Iterator[str]:
    """``lrbnn serve`` of this checkout on the host (loopback), as the reference answers."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("LRBNN_")}
    # no gRPC: the reference answers are REST's, and its default port 8001 is the one compose publishes
    # next (a reference server still shutting down held it: "bind: address already in use", CI)
    full.update({"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "LRBNN_GRPC_PORT": "0", **env})
    cmd = [
        sys.executable,
        "-m",
        "model_core.cli",
        "serve",
        "--model-repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            try:
                wait_ready(f"{base}/readyz", timeout)
            except TimeoutError:
                log.seek(0)
                raise RuntimeError(f"host lrbnn serve not ready: {log.read()[-800:]}") from None
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def requests_for(base: str, model: str, token: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The V1 and V2 bodies of the comparison: two patients (imputation values, then an older one)."""
    manifest = json.loads((REPO_ROOT / "deploy" / "models" / model / "1" / "manifest.json").read_text())
    first = example_instance(manifest)
    second = dict(first, **{k: v + 10 for k, v in first.items() if k == "age"})
    v1 = {"instances": [first, second], "parameters": {"samples": 64, "seed": 7}}
    status, meta = http(f"{base}/v2/models/{model}", token=token)
    if status != 200:
        raise RuntimeError(f"V2 metadata answered {status}: {meta[:200]!r}")
    return v1, v2_request(json.loads(meta), [first, second], seed=7, samples=64)


def answers(base: str, model: str, token: str | None, v1: Any, v2: Any) -> tuple[Any, Any]:
    s1, a1 = http(f"{base}/v1/models/{model}:predict", v1, token)
    s2, a2 = http(f"{base}/v2/models/{model}/infer", v2, token)
    if s1 != 200 or s2 != 200:
        raise RuntimeError(f"reference answers: V1 {s1} {a1[:200]!r}, V2 {s2} {a2[:200]!r}")
    return json.loads(a1), json.loads(a2)


# ------------------------------------------------------------------------------------- one container
class Checks:
    """Named pass/fail results with the reason of each failure."""

    def __init__(self) -> None:
        self.results: dict[str, bool] = {}
        self.problems: list[str] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results[name] = bool(ok)
        if not ok:
            self.problems.append(f"{name}: {detail}" if detail else name)
        return bool(ok)


def run_container(tag: str, name: str, env: dict[str, str], extra: list[str] | None = None) -> str:
    args = [
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--tmpfs",
        "/tmp:rw,size=256m",
        "--security-opt",
        "no-new-privileges",
        "-p",
        "127.0.0.1::8000",
        "-p",
        "127.0.0.1::8001",
        "--health-interval",
        "2s",
        "--health-start-period",
        "60s",
        "--health-retries",
        "3",
    ]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    docker(*args, *(extra or []), tag, timeout=60)
    port = docker("port", name, "8000/tcp").stdout.split(":")[-1].strip()
    return f"http://127.0.0.1:{port}"


def grpc_answer(target: str, v2: dict[str, Any], model: str, token: str) -> dict[str, list[Any]]:
    """The V2 request sent over gRPC with tritonclient.grpc: the outputs as lists (V2 JSON's shape)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    tensor = v2["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    inp = grpcclient.InferInput(tensor["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    auth = {"authorization": f"Bearer {token}"}
    r = client.infer(model, [inp], parameters=v2["parameters"], headers=auth)
    return {n: r.as_numpy(n).tolist() for n in ("mean", "variance", "epistemic", "ood_score", "ood")}


def fhir_check(base: str, model: str, token: str) -> str:
    """'' when the container answers the README's FHIR Bundle with a RiskAssessment, else why not."""
    bundle = json.loads((REPO_ROOT / "deploy" / "examples" / "fhir-bundle.json").read_text())
    status, body = http(f"{base}/v1/models/{model}:predict-fhir?seed=7", bundle, token)
    if status != 200:
        return f"answered {status}: {body[:200]!r}"
    kind = json.loads(body)["entry"][0]["resource"]["resourceType"]
    return "" if kind == "RiskAssessment" else f"entry 0 is a {kind}"


def inspect(name: str, fmt: str) -> str:
    return docker("inspect", "--format", fmt, name).stdout.strip()


def wait_health(name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "none"
    while time.monotonic() < deadline:
        status = inspect(name, "{{.State.Health.Status}}")
        if status in {"healthy", "unhealthy"}:
            return status
        time.sleep(0.5)
    return status


def check_refuses_without_tokens(tag: str, checks: Checks) -> None:
    """Secure by default: the image's command without token or opt-in exits 2 naming the variable."""
    res = docker("run", "--rm", "--read-only", tag, check=False, timeout=120)
    out = (res.stdout + res.stderr).strip()
    checks.add(
        "refuses_unauthenticated",
        res.returncode == 2 and "LRBNN_ALLOW_UNAUTHENTICATED" in out,
        f"exit {res.returncode}: {out[-200:]}",
    )


def drain_on_stop(base: str, name: str, model: str, token: str, checks: Checks) -> None:
    """A long request in flight when `docker stop` arrives must be answered 200; the exit status 0."""
    manifest = json.loads((REPO_ROOT / "deploy" / "models" / model / "1" / "manifest.json").read_text())
    # about a second on the torch image, a few on ONNX: well inside the 10 s request timeout
    heavy = {"instances": [example_instance(manifest)] * 256, "parameters": {"samples": 1024, "seed": 1}}
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["status"], _ = http(f"{base}/v1/models/{model}:predict", heavy, token, timeout=60)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=send)
    started = time.monotonic()
    t.start()
    inflight = False
    while time.monotonic() - started < 10 and t.is_alive():  # until the server counts it in flight
        _, text = http(f"{base}/metrics")
        inflight = any(
            line.startswith("lrbnn_inflight_requests") and not line.endswith(" 0.0")
            for line in text.decode().splitlines()
        )
        if inflight:
            break
        time.sleep(0.02)
    docker("stop", "-t", "30", name, timeout=60)
    t.join(60)
    code = inspect(name, "{{.State.ExitCode}}")
    checks.add("stop_had_request_in_flight", inflight, "the heavy request finished before the stop")
    checks.add("stop_drains_in_flight", result.get("status") == 200, str(result))
    checks.add("stop_exit_0", code == "0", f"exit status {code}")


def smoke_image(
    flavour: str, tag: str, args: argparse.Namespace, report: dict[str, Any], checks: Checks
) -> None:
    """Every check of one image; the reference is the host's server (torch, or ONNX on the image's graphs)."""
    model, token = args.model, secrets.token_urlsafe(24)
    info = report["images"].setdefault(flavour, {"tag": tag})
    info["size_mb"] = image_size_mb(tag)
    check_refuses_without_tokens(tag, checks if flavour == "cpu" else Checks())
    name = f"lrbnn-smoke-{flavour}-{os.getpid()}"
    with contextlib.ExitStack() as stack:
        ref_env = {"LRBNN_API_TOKENS": token}
        ref_repo = REPO_ROOT / "deploy" / "models"
        if flavour == "slim":  # the very graphs the image serves, on the host's ONNX backend
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cid = docker("create", tag).stdout.strip()
            try:
                docker("cp", f"{cid}:/models", str(tmp))
            finally:
                docker("rm", cid, check=False)
            ref_repo, ref_env["LRBNN_BACKEND"] = tmp / "models", "onnx"
        ref = stack.enter_context(host_server(ref_repo, ref_env, args.timeout))
        v1, v2 = requests_for(ref, model, token)
        want1, want2 = answers(ref, model, token, v1, v2)
        t0 = time.monotonic()
        base = run_container(tag, name, {"LRBNN_API_TOKENS": token})
        if not args.keep:
            stack.callback(docker, "rm", "-f", name, check=False)
        try:
            ready = wait_ready(f"{base}/readyz", args.timeout, interval=0.2)
        except TimeoutError as exc:
            logs = docker("logs", "--tail", "20", name, check=False)
            checks.add(f"{flavour}.readyz", False, f"{exc}; logs: {(logs.stdout + logs.stderr)[-600:]}")
            return
        info["readyz_s"] = round(time.monotonic() - t0, 1)
        checks.add(f"{flavour}.readyz", True)
        info["readyz_poll_s"] = round(ready, 1)
        s, _ = http(f"{base}/v1/models/{model}:predict", v1)
        checks.add(f"{flavour}.401_without_token", s == 401, f"answered {s}")
        s, _ = http(f"{base}/v1/models/{model}:predict", v1, token="wrong-" + token)
        checks.add(f"{flavour}.403_wrong_token", s == 403, f"answered {s}")
        got1, got2 = answers(base, model, token, v1, v2)
        checks.add(
            f"{flavour}.v1_equal_host", not diff_answers(got1, want1), "; ".join(diff_answers(got1, want1))
        )
        checks.add(
            f"{flavour}.v2_equal_host", not diff_answers(got2, want2), "; ".join(diff_answers(got2, want2))
        )
        checks.add(
            f"{flavour}.v1_valid", not check_prediction(got1, 2, model), str(check_prediction(got1, 2, model))
        )
        grpc_port = docker("port", name, "8001/tcp").stdout.split(":")[-1].strip()
        try:
            got_grpc = grpc_answer(f"127.0.0.1:{grpc_port}", v2, model, token)
            want = {o["name"]: o["data"] for o in want2["outputs"]}
            bad = [n for n, v in got_grpc.items() if diff_answers(v, want[n], n)]
            checks.add(f"{flavour}.grpc_equal_v2", not bad, f"outputs differ: {bad}")
        except Exception as exc:  # a refused connection or a gRPC status: the check fails, the run goes on
            checks.add(f"{flavour}.grpc_equal_v2", False, f"{type(exc).__name__}: {exc}")
        if model == "icu-mortality":
            why = fhir_check(base, model, token)
            checks.add(f"{flavour}.fhir_risk_assessment", not why, why)
        s, metrics = http(f"{base}/metrics")
        problems = check_metrics(metrics.decode(), model) if s == 200 else [f"/metrics answered {s}"]
        checks.add(f"{flavour}.metrics_open", not problems, "; ".join(problems))
        checks.add(
            f"{flavour}.predictions_counted",
            counter_value(metrics.decode(), "lrbnn_predictions_total", model) >= 4,
            "lrbnn_predictions_total < 4 after 2 V1 + 2 V2 predictions",
        )
        status = wait_health(name, 60)
        checks.add(f"{flavour}.healthy", status == "healthy", f"health {status}")
        uid = docker("exec", name, "sh", "-c", "awk '/^Uid:/{print $2}' /proc/1/status").stdout.strip()
        info["uid"] = uid
        checks.add(f"{flavour}.non_root", uid.isdigit() and int(uid) != 0, f"pid 1 uid {uid!r}")
        ro = inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        wrote = docker("exec", name, "sh", "-c", "touch /opt/venv/x || touch /x", check=False).returncode == 0
        checks.add(f"{flavour}.read_only", ro and not wrote, f"ReadonlyRootfs={ro}, write succeeded={wrote}")
        if flavour == "slim":
            res = docker("exec", name, "python3", "-c", "import torch", check=False)
            checks.add(
                "slim.no_torch",
                res.returncode != 0 and "No module named 'torch'" in res.stderr,
                f"import torch exit {res.returncode}",
            )
            backend = docker("exec", name, "sh", "-c", "echo $LRBNN_BACKEND").stdout.strip()
            checks.add("slim.onnx_backend", backend == "onnx", f"LRBNN_BACKEND={backend!r}")
        drain_on_stop(base, name, model, token, _Prefixed(checks, flavour))


class _Prefixed(Checks):
    """Adds to another Checks with names prefixed by the image flavour."""

    def __init__(self, inner: Checks, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        return self.inner.add(f"{self.prefix}.{name}", ok, detail)


# ------------------------------------------------------------------------------------------- compose
def compose_cmd() -> list[str]:
    venv = Path(sys.executable).parent / "docker-compose"
    if venv.exists():
        return [str(venv)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if docker("compose", "version", check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    raise NotRunnable("neither docker-compose nor the docker compose plugin is installed")


def prometheus_image(local: bool, cache: Path) -> str:
    """Build the Debian-package Prometheus image (deploy/prometheus/Dockerfile.debian)."""
    base = PROMETHEUS_DEBIAN_IMAGE
    if local or pullable(base) is not None:
        local_debian_image(LOCAL_PROMETHEUS_BASE, ["prometheus", "ca-certificates"], cache)
        base = LOCAL_PROMETHEUS_BASE
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    docker(
        "build",
        "-q",
        "--build-arg",
        f"DEBIAN_IMAGE={base}",
        "-t",
        PROMETHEUS_IMAGE,
        "-f",
        str(REPO_ROOT / "deploy" / "prometheus" / "Dockerfile.debian"),
        str(REPO_ROOT / "deploy" / "prometheus"),
        env=env,
        timeout=900,
    )
    return base


def prom_query(prom: str, path: str, **params: str) -> Any:
    status, body = http(f"{prom}{path}?{urllib.parse.urlencode(params)}", timeout=10)
    if status != 200:
        raise RuntimeError(f"Prometheus {path} answered {status}")
    return json.loads(body)["data"]


def wait_for(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError, KeyError, ValueError):
            last = fn()
            if last:
                return last
        time.sleep(1)
    raise TimeoutError(f"{what} not seen within {timeout:.0f} s (last: {last!r:.200})")


def compose_check(args: argparse.Namespace, local: bool, report: dict[str, Any], checks: Checks) -> None:
    """docker-compose up of the service and Prometheus; Prometheus must see the target, the rules and
    the predictions made."""
    import yaml

    cmd = compose_cmd()
    start = time.monotonic()
    prom_base = prometheus_image(local, args.cache)
    tmp = Path(tempfile.mkdtemp(prefix="lrbnn-compose-"))
    token = secrets.token_urlsafe(24)
    env_file = tmp / "lrbnn.env"
    env_file.write_text(f"LRBNN_API_TOKENS={token}\n")
    env_file.chmod(0o600)
    port, prom_port = free_port(), free_port()
    env = {
        **os.environ,
        "LRBNN_ENV_FILE": str(env_file),
        "LRBNN_PORT": str(port),
        "PROMETHEUS_PORT": str(prom_port),
        "PROMETHEUS_DEBIAN_IMAGE": prom_base,
    }
    files = ["-f", str(REPO_ROOT / "docker-compose.yml")]
    if local:
        files += ["-f", str(REPO_ROOT / "deploy" / "compose.local.yml")]
    base_cmd = [*cmd, "-p", COMPOSE_PROJECT, *files]

    def compose(*more: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*base_cmd, *more], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"compose {' '.join(more[:2])} failed: {res.stderr.strip()[-600:]}")
        return res

    try:
        compose("up", "-d", "--no-build", "--wait", "lrbnn", "prometheus", timeout=300)
        svc, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
        v1, _ = requests_for(svc, args.model, token)
        s, _ = http(f"{svc}/v1/models/{args.model}:predict", v1)
        checks.add("compose.401_without_token", s == 401, f"answered {s}")
        made = 0
        for i in range(5):
            s, _ = http(f"{svc}/v1/models/{args.model}:predict", {**v1, "parameters": {"seed": i}}, token)
            made += len(v1["instances"]) if s == 200 else 0
        checks.add("compose.predictions_200", made == 10, f"{made} of 10 predictions answered")

        def target_up() -> bool:
            targets = prom_query(prom, "/api/v1/targets")["activeTargets"]
            return any(t["labels"].get("job") == "lrbnn" and t["health"] == "up" for t in targets)

        def rules() -> set[str]:
            return {g["name"] for g in prom_query(prom, "/api/v1/rules")["groups"]}

        def counted() -> float:
            q = f'sum(lrbnn_predictions_total{{model="{args.model}"}})'
            result = prom_query(prom, "/api/v1/query", query=q)["result"]
            value = float(result[0]["value"][1]) if result else 0.0
            return value if value >= made else 0.0

        want_groups = {
            g["name"]
            for f in sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"]
        }
        try:
            checks.add("compose.prometheus_target_up", bool(wait_for("lrbnn target up", target_up, 60)))
            loaded = wait_for("rule groups", rules, 30)
            checks.add(
                "compose.rules_loaded", want_groups <= loaded, f"missing {sorted(want_groups - loaded)}"
            )
            value = wait_for("lrbnn_predictions_total", counted, 60)
            report["compose"] = {
                "prometheus_predictions_total": value,
                "predictions_made": made,
                "rule_groups": len(loaded),
                "prometheus": prom_base,
            }
            checks.add("compose.predictions_total_queried", value == made, f"{value} vs {made}")
        except TimeoutError as exc:
            checks.add("compose.prometheus", False, str(exc))
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                compose("down", "-v", "--remove-orphans", timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
        report.setdefault("compose", {})["s"] = round(time.monotonic() - start, 1)


# ---------------------------------------------------------------------------------------------- main
def summary_line(report: dict[str, Any]) -> str:
    return json.dumps({"container_test": report}, sort_keys=True, separators=(",", ":"))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    report: dict[str, Any] = {"status": "not run"}
    try:
        report["engine"] = connect()
        if args.no_build:
            tags = {f: image_tags(args.image_repo)[f] for f in args.images}
            report["images"] = {f: {"tag": t} for f, t in tags.items()}
            local = not image_present(OFFICIAL_BASE)
        else:
            tags = build_images(args, report)
            local = report.get("base", {}).get("image") != OFFICIAL_BASE
    except NotRunnable as exc:
        report["reason"] = f"{exc.summary} ({exc})"
        print(summary_line(report))
        print(f"{STATUS_PREFIX} NOT RUN: {exc.summary} ({exc})")
        return 0
    except Exception as exc:
        report.update(status="failed", problems=[f"build: {type(exc).__name__}: {exc}"])
        print(summary_line(report))
        print(f"{STATUS_PREFIX} FAILED (the build)")
        return 1
    if args.build_only:
        for flavour, tag in tags.items():
            report["images"][flavour]["size_mb"] = image_size_mb(tag)
        report["status"] = "built"
        print(summary_line(report))
        return 0
    checks = Checks()
    for flavour, tag in tags.items():
        try:
            smoke_image(flavour, tag, args, report, checks)
        except Exception as exc:
            checks.add(f"{flavour}.run", False, f"{type(exc).__name__}: {exc}")
    if not args.no_compose:
        try:
            compose_check(args, local, report, checks)
        except Exception as exc:
            checks.add("compose", False, f"{type(exc).__name__}: {exc}")
    passed = sum(checks.results.values())
    report.update(
        status="passed" if not checks.problems else "failed",
        checks=f"{passed}/{len(checks.results)}",
        total_s=round(time.monotonic() - start, 1),
    )
    if checks.problems:
        report["problems"] = checks.problems
    for p in checks.problems:
        print(f"  - {p}")
    print(summary_line(report))
    if checks.problems:
        print(f"{STATUS_PREFIX} FAILED ({len(checks.problems)} problem(s))")
        return 1
    print(f"{STATUS_PREFIX} PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
