# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is
# missing and install torch (CPU build, in its own step so no CUDA build is pulled) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flowpost-installed
# How torch is installed, in its own step. Elsewhere torch==2.13.0 may resolve to a CUDA
# build; for a CPU-only one: make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: demo test lint typecheck venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev,robot,diffusers,wandb]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowpost demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	OMP_NUM_THREADS=2 $(BIN)/pytest
	OMP_NUM_THREADS=2 $(BIN)/pytest --doctest-modules flowpost

bench: $(STAMP)
	$(BIN)/python -m pip install -e ".[bench]" && $(BIN)/python -m pip install --no-deps torchcfm
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_out runs
