#!/usr/bin/env bash
# Installs the system tools the deploy tests need (promtool + prometheus), idempotently:
# nothing is done when promtool is already on PATH.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
    echo "promtool present: $(command -v promtool)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
command -v promtool
