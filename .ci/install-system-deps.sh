#!/usr/bin/env bash
# Installs the system tools the tests need, idempotently: promtool + prometheus (deploy tests) and wrk
# (the load generator of benchmarks/serve_load.py, whose wrk client is tested against a local server).
# Nothing is installed when every tool is already on PATH.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "present: $(command -v promtool) $(command -v wrk)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v promtool
command -v wrk
