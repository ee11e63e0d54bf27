# borgcell: `make run` starts a dev cell, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit proto bench bench-raft bench-borglet bench-scheduler bench-snapshot bench-scale clean

$(STAMP): pyproject.toml setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat: a plain path entry instead of an import hook that costs every command ~10 ms
	# (setuptools calls the mode deprecated: fall back to the default if it is ever refused)
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat \
	  || $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/borgmaster dev

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy borgmaster borglet cfg

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. proto/borg/v1/borg.proto

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-raft: $(STAMP)
	$(BIN)/python -m bench.raft
	$(BIN)/python -m bench.raft --compare-tls

bench-borglet: $(STAMP)
	$(BIN)/python -m bench.borglet

bench-snapshot: $(STAMP)
	$(BIN)/python -m bench.snapshot

bench-scheduler: $(STAMP)
	$(BIN)/python -m bench.scheduler --machines 10000 --tasks 100000 --json
	$(BIN)/python -m bench.fauxmaster --trace ../shared/traces/google2011 --until 0 --json

# 3 masters + hollow machines at a few sizes (each run bounded to ~3 minutes): results merged
# into bench/results/scale.json, one entry per fleet size.
bench-scale: $(STAMP)
	for n in 1000 2000 5000 10000; do \
	  $(BIN)/python -m bench.scale --machines $$n --tasks 10000 --json || exit 1; \
	done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
