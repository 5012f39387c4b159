# The two commands: `make serve` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed explicitly first: the CPU wheel, so no multi-GB CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0
MODEL_REPOSITORY ?= deploy/models

.PHONY: serve test lint typecheck install install-dev clean

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
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
