# Two commands: `make run` (set up, build the engine, start the agent on the default model)
# and `make test` (same set-up, then the whole test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup engine bench clean

run: setup engine
	$(VENV)/bin/slp agent start

test: setup engine
	$(PY) -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

engine: setup
	$(PY) build.py

bench: setup engine
	$(PY) -m bench

clean:
	rm -rf build $(VENV)
