# The two commands a newcomer needs:   make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MLOPS_STATE_DIR ?= $(CURDIR)/state
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo stop test test-fast lint lock check-lock bench clean-state

# The venv is rebuilt whenever the pins change; the stamp records which pins it was built from,
# so a cached venv can never hide a missing install step.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) tools/check_lock.py
	@touch $@

install: $(VENV)/.installed

demo: install           ## run the loop on the embedded stack (no Docker needed) and print what it did
	$(PY) -m include.demo

stop:                   ## stop the model servers and the serving edge the demo/deploy left running
	-$(PY) -m include.deployment stop

test: install           ## every test: integrity, unit, integration, e2e (what CI runs), on 2 xdist workers
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout=1800 -n 2 --dist loadscope --no-loadscope-reorder --durations=30

test-fast: install      ## the quick layer: DAG integrity + unit tests, skips slow/e2e
	$(PY) -m pytest tests/dags tests/unit -q -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check .

check-lock: install
	$(PY) tools/check_lock.py

lock:                   ## re-resolve requirements.txt into constraints.txt (needs network)
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install -q --upgrade pip && .lockvenv/bin/pip install -q -r requirements.txt
	.lockvenv/bin/pip freeze --exclude-editable > constraints.txt && rm -rf .lockvenv

bench: install
	$(PY) bench/parse_times.py

clean-state: stop
	rm -rf state
