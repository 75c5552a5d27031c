# Persona Studio: `make run` starts the whole studio, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test reliability lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) manage.py studio_run

test: setup
	$(PY) -m pytest

# The reliability suite alone, rewriting docs/reliability.md with its figures.
reliability: setup
	$(PY) -m tests.reliability.report

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf var/ test-artifacts/
