# lrbnn model server. Default target: the CPU image (torch CPU wheel); target slim: torch-free (ONNX).
#
#   docker build -t lrbnn:0.1.0-cpu .                              # online: official Python base, PyTorch CPU index
#   docker build --target slim -t lrbnn:0.1.0-slim .               # torch-free, LRBNN_BACKEND=onnx
#   docker build -f deploy/cuda.Dockerfile -t lrbnn:0.1.0-cuda .   # NVIDIA GPU image (Triton sampling op)
#   make image / make container-test                               # offline: local base + wheelhouse (below)
#
# Offline or proxied builds (no image registry, no PyTorch index; air-gapped networks) use two build
# arguments instead of a second Dockerfile:
#   PYTHON_IMAGE  any Debian-like image with python3 and venv (make: mmdebstrap -> docker import);
#   WHEELHOUSE    a folder of the build context. When it holds wheels (`make wheelhouse`: pip download on
#                 the build machine, where the proxy and its CA are), every pip install below is
#                 `--no-index --find-links` from it and the build needs no network at all; when it holds
#                 none (the default, deploy/wheelhouse/ with only its README), the indexes are used.
# The wheelhouse is copied into the builder stages only; the final stages copy nothing but the venv and
# the model repository, so no wheel, pip cache or CA bundle of the build machine reaches the image.
# No `# syntax=` line and no RUN --mount: the classic builder (DOCKER_BUILDKIT=0) builds this file as
# BuildKit does. The classic builder builds every stage before the target, so the CUDA image lives in
# deploy/cuda.Dockerfile: building the CPU image must not need the CUDA base or index.
# Nothing is trained at build time: the bundled model repository (deploy/models) is copied in as is;
# the slim image's stage exports ONNX graphs of the models listed in ONNX_MODELS with torch, then drops
# torch.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE=deploy/wheelhouse
# The bundled models the ONNX exporter supports (the sequence and text models are not exportable).
ARG ONNX_MODELS=icu-mortality

# ---------------------------------------------------------------- CPU build: venv with CPU torch
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ARG WHEELHOUSE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY ${WHEELHOUSE} /wheels
# pip-from: the wheelhouse when it holds wheels (offline, --no-index), else the given index.
# Why SC2016 is ignored: the single-quoted lines are the script's text, expanded when it runs.
# hadolint ignore=SC2016
RUN printf '%s\n' '#!/bin/sh' 'index="$1"; shift' \
        'if ls /wheels/*.whl >/dev/null 2>&1; then exec pip install --no-index --find-links /wheels "$@"; fi' \
        'if [ -n "$index" ]; then exec pip install --index-url "$index" "$@"; fi' \
        'exec pip install "$@"' > /usr/local/bin/pip-from \
    && chmod 0755 /usr/local/bin/pip-from
# torch first, from the CPU index: the package's torch>=2.4 requirement is then already satisfied.
RUN pip-from "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
# Why DL3013 is ignored: this installs the project itself from source; its dependency ranges live in
# pyproject.toml and torch, the one that matters for size, is pinned in the line above.
# hadolint ignore=DL3013
RUN pip-from "" ".[serve]"

# ---------------------------------------------------------------- ONNX export (torch, build time only)
FROM builder AS onnx-export
ARG ONNX_MODELS
# hadolint ignore=DL3013
RUN pip-from "" ".[onnx]"
COPY deploy/models /models
RUN set -e; for m in ${ONNX_MODELS}; do for v in /models/"$m"/*/; do \
        lrbnn export-onnx "$v" "${v}model.onnx"; done; done \
    && mkdir /models-onnx \
    && for m in ${ONNX_MODELS}; do cp -r /models/"$m" /models-onnx/; done

# ---------------------------------------------------------------- slim build: venv without torch
FROM ${PYTHON_IMAGE} AS slim-builder
ARG WHEELHOUSE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=builder /usr/local/bin/pip-from /usr/local/bin/pip-from
COPY ${WHEELHOUSE} /wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
# torch is a base dependency of the package: install it without its dependencies and name the serving
# ones (docs/service.md, "torch-free"); the import check fails the build if anything pulled torch in.
# hadolint ignore=DL3013
RUN pip-from "" "numpy>=1.26" "pydantic>=2.6" "fastapi>=0.110" "uvicorn>=0.29" "pydantic-settings>=2.2" \
        "prometheus-client>=0.20" "orjson>=3.9" "onnxruntime>=1.17" "uvloop>=0.19,<0.22" "httptools>=0.6" \
        "safetensors>=0.4" "scikit-learn>=1.4" "sqlalchemy>=2.0" "alembic>=1.13" "psycopg[binary]>=3.1" \
        "fhir.resources>=8.1,<9" "ucumvert>=0.3.2,<0.4" "pint>=0.24" "grpcio>=1.85" "protobuf>=7.35.1,<8" \
    && pip-from "" --no-deps . \
    && python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------- runtime base of both images
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lrbnn
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LRBNN_MODEL_REPOSITORY=/models \
    LRBNN_STATE_DIR=/tmp/lrbnn-state \
    LRBNN_DEVICE=cpu
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
# All interfaces: the server refuses to start without LRBNN_API_TOKENS (or LRBNN_API_TOKENS_FILE)
# unless LRBNN_ALLOW_UNAUTHENTICATED=true.
CMD ["lrbnn", "serve", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- slim runtime image (ONNX, no torch)
FROM runtime AS slim
COPY --from=slim-builder /opt/venv /opt/venv
COPY --from=onnx-export --chown=root:root /models-onnx /models
ENV LRBNN_BACKEND=onnx

# ---------------------------------------------------------------- CPU runtime image (default target)
FROM runtime AS cpu
COPY --from=builder /opt/venv /opt/venv
# Read-only for the service user: the model repository is verified (sha256) at load time.
COPY --chown=root:root deploy/models /models
