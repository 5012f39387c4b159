#!/usr/bin/env bash
# Installs the system tools the tests need, idempotently: promtool + prometheus (deploy tests), wrk
# (the load generator of benchmarks/serve_load.py, whose wrk client is tested against a local server),
# postgresql (the store's PostgreSQL test),
# and docker.io + mmdebstrap (the container tests: deploy/smoke_test.py builds a local Debian base where
# no image registry answers). Starts dockerd when none runs. Nothing is installed when every tool is
# already on PATH; where the engine cannot start (no root, no cgroups) the container tests report
# "not run" with the reason and the suite still passes.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# the engine, not only a client: a machine may carry a docker CLI without dockerd
{ command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; } || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
# PostgreSQL for the prediction store's end-to-end test (tests/integration/test_store_process.py starts
# a throw-away cluster on loopback; Debian puts initdb under /usr/lib/postgresql/<version>/bin)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || echo "install-system-deps: could not install ${missing[*]} (the tests that need them skip with the reason)"
fi
command -v promtool
command -v wrk
# A Docker engine for the container tests: start one when the CLI is there and no daemon answers.
if command -v docker >/dev/null 2>&1 && ! docker version >/dev/null 2>&1; then
    if command -v dockerd >/dev/null 2>&1; then
        $SUDO sh -c 'nohup dockerd >/var/log/lrbnn-ci-dockerd.log 2>&1 &' || true
        for _ in $(seq 1 30); do docker version >/dev/null 2>&1 && break; sleep 1; done
    fi
    docker version --format 'docker engine {{.Server.Version}}' 2>/dev/null \
        || echo "install-system-deps: no Docker engine (container tests will report 'not run'); see /var/log/lrbnn-ci-dockerd.log"
else
    docker version --format 'docker engine {{.Server.Version}}' 2>/dev/null || echo "install-system-deps: no docker CLI"
fi
