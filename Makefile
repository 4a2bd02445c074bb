# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is
# missing and install torch (CPU build, in its own step so no CUDA build is pulled) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flowpost-installed

.PHONY: demo test lint typecheck venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install "torch==2.13.0"
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
