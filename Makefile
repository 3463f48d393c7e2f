# Two commands on a fresh machine: `make test` and `make run`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test run lint typecheck imports pytest realmodel bench gpu-check chaos edge-report docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy -p trainconsole.engine -p trainconsole.console

# The import contracts in pyproject.toml ([tool.importlinter]): floors, the torch wall, no cycles.
imports: $(STAMP)
	$(BIN)/lint-imports

# The real-model tier's SmolLM2, fetched and converted once into ~/.cache/trainconsole-tests
# (or $$TRAINCONSOLE_TEST_MODELS), before the tests run so its first build is outside any timeout.
realmodel: $(STAMP)
	$(BIN)/python -m tests.realmodel.smollm2

pytest: $(STAMP) realmodel
	$(BIN)/pytest -q

test: lint typecheck imports pytest

run: $(STAMP)
	$(BIN)/trainconsole demo

bench: $(STAMP)
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

# The GPU paths (NVML, a real CUDA OOM and the ladder, memory back to baseline, bf16 steps/s):
# bench/results/gpu.json on a GPU machine; on one without, it says so and exits 0.
gpu-check: $(STAMP) realmodel
	$(BIN)/python bench/gpu.py

chaos: $(STAMP)
	TRAINCONSOLE_CHAOS_KILLS=200 TRAINCONSOLE_CHAOS_RESULTS=bench/results/chaos.json $(BIN)/pytest -q -s -m slow tests -k chaos_kill

edge-report: $(STAMP)
	$(BIN)/python -m trainconsole.engine.edge_coverage --report

docs: $(STAMP)
	$(BIN)/python -m trainconsole.engine.edge_coverage --write-docs docs/edge-cases.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
