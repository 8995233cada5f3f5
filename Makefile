# Two commands: `make run` (set up, build the engine, start the agent on the default model)
# and `make test` (same set-up, then the whole test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-gpu setup engine test-deps browser bench soak clean

run: setup engine
	$(VENV)/bin/slp agent start

test: setup engine test-deps browser
	$(PY) -m pytest

# On a machine with an NVIDIA GPU: build the CUDA engine and run the GPU tests plus the end-to-end suites
# over it (CI has no GPU, so `make test` leaves these out).
test-gpu: setup test-deps
	$(PY) build.py --preset cuda
	$(PY) -m pytest -m gpu tests/test_gpu.py
	$(PY) -m pytest tests/test_engine_client.py tests/test_agent_e2e.py tests/test_projects_e2e.py \
		tests/test_engine_apis.py tests/test_faults.py tests/test_load.py

# What the end-to-end tests drive besides Python, from Debian's and npm's registries when missing:
# Node.js + the openai npm package (the seed's JavaScript example), curl, systemd-analyze (the unit check),
# gdb (the engine self-test names the function a crashing build died in).
test-deps:
	@command -v node >/dev/null && command -v npm >/dev/null && command -v curl >/dev/null && \
		command -v systemd-analyze >/dev/null && command -v gdb >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq nodejs npm curl systemd gdb)
	npm ci --prefix tests/js --no-audit --no-fund --silent

# The browser tests/test_docs.py drives (Playwright on Debian's chromium; Playwright downloads nothing).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

engine: setup
	$(PY) build.py

bench: setup engine
	$(PY) -m bench
	$(PY) -m bench.models
	$(PY) -m bench.documents
	$(PY) -m bench.ollama
	$(PY) -m bench.prompt_cache

# Mixed load on one agent for SOAK_MINUTES (default 30); not part of `make test`.
SOAK_MINUTES ?= 30
soak: setup engine
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf build $(VENV)
