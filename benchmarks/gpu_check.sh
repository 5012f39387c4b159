#!/usr/bin/env bash
# One prepared check of the low-rank sampling op on a lent GPU; finishes in under 5 minutes.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Runs from the repository root with the machine's own Python (torch + Triton are installed there; nothing
# is installed). Writes $OUT/gpu_check.json, $OUT/gpu_check.log and $OUT/nvidia-smi.txt; the table is
# printed last. Exit status: 0 when every correctness check passed, 1 when one failed, 2 without CUDA.
# Extra arguments go to benchmarks/gpu_check.py (e.g. --dry-run on a machine without a GPU).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"

# Python: $PYTHON if set, else the first of python3 / python / .venv/bin/python whose torch sees CUDA, else
# the first that imports torch at all (enough for --dry-run).
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    fallback=""
    for cand in python3 python .venv/bin/python; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
            PY="$cand"
            break
        fi
        if [[ -z "$fallback" ]] && "$cand" -c 'import torch' >/dev/null 2>&1; then fallback="$cand"; fi
    done
    PY="${PY:-${fallback:-python3}}"
fi
echo "using $PY" >&2

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' || true
} >"$OUT/nvidia-smi.txt" 2>&1

# The Python part keeps its own budget (270 s) and skips what does not fit; the timeout is a backstop.
set +e
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 290 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
set -e
if [[ $status -eq 124 ]]; then
    echo "gpu_check.py ran past 290 s and was stopped; see $OUT/gpu_check.log" >&2
fi
exit "$status"
