# Every developer task is one command. The venv bootstraps itself on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Byte-compiled modules start faster; some environments switch them off.
RUN := env -u PYTHONDONTWRITEBYTECODE

.PHONY: serve test lint format types check bench bench-quick bench-cache workload chaos mock-upstream wrk clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

serve: $(VENV)/.installed  ## run the gateway on 127.0.0.1:4000 with the embedded defaults
	$(RUN) $(VENV)/bin/sluicegate serve

mock-upstream: $(VENV)/.installed  ## run the mock provider over HTTP on 127.0.0.1:9100
	$(RUN) $(VENV)/bin/sluicegate mock-upstream

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

types: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

test: lint types  ## lint, types and the whole test suite
	$(PY) -m pytest

check: test

# wrk comes from Debian's packages; the harness installs LiteLLM into its own venv itself.
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| { echo "install wrk (Debian/Ubuntu: apt-get install wrk)"; exit 1; }

bench: $(VENV)/.installed-dev wrk  ## full benchmark against LiteLLM, cache cells included (about 20-25 minutes)
	$(RUN) $(PY) bench/run.py

bench-quick: $(VENV)/.installed-dev wrk  ## short benchmark (about a minute and a half)
	$(RUN) $(PY) bench/run.py --quick

bench-cache: $(VENV)/.installed-dev wrk  ## the response-cache cells alone, beside LiteLLM's cache (about 5 minutes)
	$(RUN) $(PY) bench/run.py --cache-only

workload: $(VENV)/.installed-dev  ## 100 users of the three features for 60 s (about a minute and a half)
	$(RUN) $(PY) bench/workload.py

chaos: $(VENV)/.installed-dev  ## 50 clients for 60 s while a fault strikes every 2 s (needs Redis; about 75 s)
	$(RUN) $(PY) bench/chaos.py

clean:
	rm -rf $(VENV) .sluicegate .pytest_cache .mypy_cache .ruff_cache
