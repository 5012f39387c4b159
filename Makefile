# The two commands: `make serve` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed explicitly first: the CPU wheel, so no multi-GB CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0
MODEL_REPOSITORY ?= deploy/models

.PHONY: serve test lint typecheck install install-dev clean image container-test wheelhouse print-image-tags

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[serve,onnx]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

serve: $(VENV)/.installed
	$(VENV)/bin/lrbnn serve --model-repository $(MODEL_REPOSITORY) --host 127.0.0.1 --port 8000

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# One BLAS thread: the models are small, and on 2 cores intra-op threads oversubscribe (10-100x slower
# under load) while buying nothing for these matrix sizes.
test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -ra --durations=5

# -------------------------------------------------------------------------------- container images
# Tags: $(IMAGE_REPO):<version>-cpu|slim|cuda (deploy/k8s and docker-compose.yml reference them).
# Where no image registry answers, deploy/smoke_test.py makes a local Debian base (mmdebstrap) and a
# wheelhouse (pip download), cached in CONTAINER_CACHE between runs, and builds with the classic builder.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REPO ?= lrbnn
IMAGE_CPU := $(IMAGE_REPO):$(VERSION)-cpu
IMAGE_SLIM := $(IMAGE_REPO):$(VERSION)-slim
IMAGE_CUDA := $(IMAGE_REPO):$(VERSION)-cuda
CONTAINER_CACHE ?= $(HOME)/.cache/lrbnn-container
SMOKE := $(PY) deploy/smoke_test.py --cache $(CONTAINER_CACHE) --image-repo $(IMAGE_REPO)

print-image-tags:
	@echo IMAGE_CPU=$(IMAGE_CPU) IMAGE_SLIM=$(IMAGE_SLIM) IMAGE_CUDA=$(IMAGE_CUDA)

# API tokens for docker compose (LRBNN_API_TOKENS); generated once, readable by you only, not committed.
deploy/secrets/lrbnn.env:
	@mkdir -p $(@D)
	@umask 077 && $(PYTHON) -c 'import secrets; print("LRBNN_API_TOKENS=" + secrets.token_urlsafe(32))' > $@
	@echo "wrote $@ (API token for docker compose; clients send 'Authorization: Bearer <token>')"

# The default image (CPU, torch); prints one JSON line with the base, the build time and the size.
image: $(VENV)/.installed deploy/secrets/lrbnn.env
	$(SMOKE) --images cpu --build-only

# Both images, every container check, compose with a real Prometheus; one JSON summary line.
container-test: $(VENV)/.installed-dev deploy/secrets/lrbnn.env
	$(SMOKE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
