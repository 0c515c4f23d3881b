# One entry point for everything: set-up, demo, tests, code generation, benchmarks.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

BUF_VERSION := 1.75.0

.PHONY: demo test proto lint buf-lint bench bench-full clean faults soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/citybroker demo

# Two pytest-xdist workers (the machine has two CPUs); a file's tests stay in one worker, so its
# module-wide fixtures (federations, processes) are built once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) lint buf-lint
	$(PY) scripts/gen_proto.py --check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/function_shape.py

# buf comes from npm; without npx (no Node.js) the proto lint is skipped, and says so.
buf-lint:
	@if command -v npx >/dev/null 2>&1; then \
		cd proto && npx --yes @bufbuild/buf@$(BUF_VERSION) lint && echo "buf lint: clean"; \
	else echo "buf lint skipped: npx (Node.js) not found"; fi

# The benchmark set that fits in 15 minutes on the 2-CPU machine (about 13): the federated query,
# log appends and bundle verification at their full defaults; minimisation and consent import at
# 200,000 residents / events instead of 1,000,000 (same query, same baselines, same ratios; the
# size run is recorded in each figure's parameters and shown in SUMMARY.md); the differencing
# guard. `make bench-full` runs the full-size set (about 35 minutes).
bench: $(STAMP)
	$(PY) bench/federated_query.py
	$(PY) bench/log_append.py --duration 3 --sustained 20
	$(PY) bench/verify_bundle.py
	$(PY) bench/minimisation.py --residents 200000 --trips 600000 --runs 3
	$(PY) bench/consent_import.py --events 200000
	$(PY) bench/differencing_guard.py
	$(PY) bench/summary.py

bench-full: $(STAMP)
	$(PY) bench/federated_query.py
	$(PY) bench/log_append.py
	$(PY) bench/verify_bundle.py
	$(PY) bench/minimisation.py
	$(PY) bench/consent_import.py
	$(PY) bench/differencing_guard.py
	$(PY) bench/summary.py

.PHONY: bench-log bench-verify bench-minimisation bench-consent bench-guard

# Durable Merkle log appends on SQLite against raw SQL inserts (about 3 minutes).
bench-log: $(STAMP)
	$(PY) bench/log_append.py

# Streaming verification of a 100,000-entry bundle against raw Ed25519 (about 2 minutes).
bench-verify: $(STAMP)
	$(PY) bench/verify_bundle.py

# Minimisation on a 1,000,000-resident city: node gRPC vs raw SQL on SQLite, PostgreSQL and DuckDB
# (about 10 minutes; --quick for a smoke run).
bench-minimisation: $(STAMP)
	$(PY) bench/minimisation.py

# Bulk import of 1,000,000 consent events through the CLI's import function against plain
# SQLAlchemy Core executemany of the same rows (about 15 minutes; --quick for a smoke run).
bench-consent: $(STAMP)
	$(PY) bench/consent_import.py

# Fault injection with real processes (tests marked `faults`, left out of `make test`): nodes killed
# and hung, the broker killed under load, PostgreSQL restarted, a full disk, one city's network
# namespace cut off. Needs root for namespaces and mounts (those tests skip without it); about
# 3 minutes (more on a busy machine).
faults: $(STAMP)
	$(PY) -m pytest -q -m faults tests/faults tests/system/test_netns_federation.py

# The federated query load at half the measured peak, five minutes of warm-up then ten measured:
# no errors, no process's memory growing over 10 % after warm-up (bench/results/soak.json; about
# 17 minutes). --warmup and --duration for a shorter run.
soak: $(STAMP)
	$(PY) bench/soak.py

# The differencing guard's cost: 10,000 earlier cells over 1,000,000 resident numbers (about 2 minutes).
bench-guard: $(STAMP)
	$(PY) bench/differencing_guard.py

clean:
	rm -rf $(VENV) build *.egg-info
