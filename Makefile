# Two commands on a fresh machine: `make run` trains the default config, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/sync_mirrored.yaml

.PHONY: install run test notebooks bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/paradl-tf train --config=$(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest tests/test_notebooks.py

bench: $(STAMP)
	$(BIN)/paradl-tf bench

# The documentation site (MkDocs + Material), into site/; tests/test_docs.py builds it with --strict.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .cache .pytest_cache
