# One entry point for everything: set-up, demo, tests, code generation, benchmarks.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test proto proto-check lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/citybroker demo

test: $(STAMP)
	$(PY) scripts/gen_proto.py --check
	$(PY) -m ruff check .
	$(PY) -m pytest -q

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) bench/federated_query.py

clean:
	rm -rf $(VENV) build *.egg-info
