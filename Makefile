# Shoal developer commands. Everything runs from the locked virtualenv in .venv.
PY      ?= python3
UV      := $(PY) -m uv
UV_VERSION := 0.13.8
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.shoal-synced
PORT    ?= 8000

.PHONY: venv run demo test lint typecheck pytest bench clean

## venv: create/refresh .venv from uv.lock and compile the hot path (no-ops when nothing changed)
venv: $(STAMP)
	@$(BIN)/python tools/native.py

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --all-extras
	@touch $(STAMP)

## run: start the reference shop (users x2, orders x2, gateway on :8080); Ctrl-C stops it
run: venv
	$(BIN)/shoal up examples/shop/shoal.yaml

## demo: one instrumented service on $(PORT), no platform
demo: venv
	PORT=$(PORT) SHOAL_SERVICE=demo $(BIN)/shoal serve examples.demo.app:app

## test: lint, type-check, then the whole test suite
test: venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check src tests bench examples tools

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

## bench: benchmarks printing side-by-side ratios (see docs/benchmarks.md)
bench: venv
	$(BIN)/python bench/chassis.py

clean:
	-$(BIN)/python tools/native.py --clean
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
