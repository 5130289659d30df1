# Two commands on a fresh machine: `make run` trains the default config, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of packages: `make run` installs the package and what running needs, `make test` adds the
# test and docs extras, `make bench` the bench extra; each installs only what the venv still lacks.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test
BENCHING := $(VENV)/.installed-bench
CONFIG ?= configs/sync_mirrored.yaml

.PHONY: install run test notebooks bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes. An install with extras also installs the runtime, so it
# touches the runtime stamp too: `make run` after `make test` installs nothing.
$(RUNTIME): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TESTING): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $(RUNTIME) $@

$(BENCHING): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(RUNTIME) $@

# Everything the suite needs (what `make test` installs), without running it.
install: $(TESTING)

run: $(RUNTIME)
	$(BIN)/paradl-tf train --config=$(CONFIG)

# Two test processes (pytest-xdist), a test file each at a time: most of a multi-process test is spent waiting
# for TensorFlow to start and for its tasks to meet, so two of them share 2 cores well (28 -> 18 min there).
# Whole files, because module fixtures (a Slurm, emulated hosts) serve every test of their file.
TEST_WORKERS ?= 2
test: $(TESTING)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

notebooks: $(TESTING)
	$(BIN)/python -m pytest tests/test_notebooks.py

bench: $(BENCHING)
	$(BIN)/paradl-tf bench

# The documentation site (MkDocs + Material), into site/; tests/test_docs.py builds it with --strict.
docs: $(TESTING)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .cache .pytest_cache
