# Two commands for users: `make demo` and `make test`. Every target is idempotent and fast when nothing changed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Re-runs only when the dependency list or this file changes.
$(STAMP): pyproject.toml setup.py Makefile tools/setup.sh
	bash tools/setup.sh
	touch $(STAMP)

demo: setup
	bash egs/mini/run.sh

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check seqwin kernels tests tools

# Peers (lucidrains local-attention, routing-transformer) come from the optional `bench` extra.
bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) tools/bench_attention.py --out bench_out

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
