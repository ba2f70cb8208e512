# facebench: the two commands of the quick start.
#   make bench   create .venv, install facebench, run the default suite (SynthFaces, CPU); the run prints its leaderboard
#   make test    create .venv, install facebench with its test extras, run the tests
#   make test-fast  the same without the end-to-end tests marked slow (a few minutes on 2 cores)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: bench test test-fast install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# facebench run builds the suite's reports (leaderboard, tables, figures) and prints the summary once it is done
bench: install
	$(BIN)/facebench run

# pytest exits 5 when it collected no tests: that is a failure here too
test: install-dev
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
