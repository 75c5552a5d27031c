# Persona Studio: `make run` starts the whole studio, `make test` runs the tests
# (all of them, import contracts included); `make test-fast` is the inner loop.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast reliability lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test,production]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) manage.py studio_run

# The suite runs in parallel test processes (pytest-xdist), one per core up to
# TEST_PROCESSES; each has its own Redis, database, media and worker zygote.
TEST_PROCESSES ?= 4
XDIST := -n auto --maxprocesses $(TEST_PROCESSES) --dist worksteal

# A test that restarts a shared service (PostgreSQL) runs alone afterwards.
test: setup
	$(PY) -m pytest $(XDIST) -m "not exclusive"
	$(PY) -m pytest -m exclusive

# Everything but the end-to-end, browser and reliability suites (they start
# worker processes, Chromium, load): the inner loop while changing code.
test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not e2e and not browser and not reliability"

# The reliability suite alone, rewriting docs/reliability.md with its figures.
reliability: setup
	$(PY) -m tests.reliability.report

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf var/ test-artifacts/
