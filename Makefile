# crmflow: `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up test lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: crmflow needs Python 3.11 or 3.12 (durable_rules does not import on 3.13)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/crmflow demo

up: install
	$(BIN)/crmflow up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: install
	$(BIN)/pytest

test: lint pytest

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/redeem.py

clean:
	rm -rf .crmflow $(VENV) *.egg-info
