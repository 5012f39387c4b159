# syntax=docker/dockerfile:1
# lrbnn model server.
#
#   docker build -t lrbnn:cpu .                                   # default: CPU image
#   docker build --target cuda -t lrbnn:cuda .                    # NVIDIA GPU image (Triton sampling op)
#
# Why torch (CPU wheel) and not an onnxruntime-only image for the default: the torch image serves the
# bundled models as they are (weights + manifest) in both sampling modes. The onnxruntime backend
# (LRBNN_BACKEND=onnx) does serve without torch (tests/service/test_torch_free.py; the install is in
# docs/service.md), and would shrink the image from roughly 1 GB to roughly 250 MB (torch ~700 MB
# installed vs onnxruntime ~50 MB), but it serves <version>/model.onnx, which deploy/models does not
# carry, and torch is a base dependency of the package: a target for it needs an export stage with
# torch and a --no-deps install, and is not added here because no Docker engine was at hand to build it.
# The CPU wheel comes from the PyTorch CPU index so no multi-GB CUDA build is pulled; nothing is
# trained at build time: the bundled model repository (deploy/models) is copied in as is.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG TRITON_VERSION=3.6.0

# ---------------------------------------------------------------- CUDA build: venv with CUDA torch + triton
FROM ${CUDA_IMAGE} AS cuda-builder
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX
ARG TRITON_VERSION
# Why DL3008 is ignored: the Ubuntu python3 packages are fixed by the pinned base image tag; apt
# version strings change with every security update and pinning them would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN pip install --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install "triton==${TRITON_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
# Why DL3013 is ignored: this installs the project itself from source; its dependency ranges live in
# pyproject.toml and torch, the one that matters for size, is pinned in the line above.
# hadolint ignore=DL3013
RUN pip install ".[serve]"

# ---------------------------------------------------------------- CUDA runtime image
FROM ${CUDA_IMAGE} AS cuda
# Why DL3008 is ignored: see cuda-builder; the interpreter must match the venv copied below.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lrbnn
COPY --from=cuda-builder /opt/venv /opt/venv
COPY --chown=root:root deploy/models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TRITON_CACHE_DIR=/tmp/triton \
    LRBNN_MODEL_REPOSITORY=/models \
    LRBNN_DEVICE=cuda
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
CMD ["lrbnn", "serve", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- CPU build: venv with CPU torch
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index: the package's torch>=2.4 requirement is then already satisfied.
RUN pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
# Why DL3013 is ignored: this installs the project itself from source; its dependency ranges live in
# pyproject.toml and torch, the one that matters for size, is pinned in the line above.
# hadolint ignore=DL3013
RUN pip install ".[serve]"

# ---------------------------------------------------------------- CPU runtime image (default target)
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lrbnn
COPY --from=builder /opt/venv /opt/venv
# Read-only for the service user: the model repository is verified (sha256) at load time.
COPY --chown=root:root deploy/models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LRBNN_MODEL_REPOSITORY=/models \
    LRBNN_DEVICE=cpu
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
CMD ["lrbnn", "serve", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]
