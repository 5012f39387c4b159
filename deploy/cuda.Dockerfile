# lrbnn model server, NVIDIA GPU image (CUDA runtime + Triton sampling op).
#
#   docker build -f deploy/cuda.Dockerfile -t lrbnn:0.1.0-cuda .      # context: the repository root
#
# A separate file because the classic builder (DOCKER_BUILDKIT=0) builds every stage before the target:
# in the main Dockerfile these stages would make the CPU build need the CUDA base image and the CUDA
# index. Needs a registry and the internet (nvidia/cuda base, PyTorch CUDA index); not built by
# `make container-test`.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
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
    LRBNN_STATE_DIR=/tmp/lrbnn-state \
    LRBNN_DEVICE=cuda
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
# All interfaces: the server refuses to start without LRBNN_API_TOKENS (or LRBNN_API_TOKENS_FILE)
# unless LRBNN_ALLOW_UNAUTHENTICATED=true.
CMD ["lrbnn", "serve", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]
