# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNS ?= runs/demo
# Exact versions (CI and `make install`); pyproject.toml keeps the ranges.
LOCK := requirements-lock.txt

.PHONY: install demo test test-slow lint format bench clean-demo

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The linters at the versions in $(LOCK) (installed into the venv when missing).
$(VENV)/.linters: $(VENV)/.installed $(LOCK)
	$(PY) -m pip install -q -c $(LOCK) ruff pyink
	touch $@

# Check only: ruff's rules and pyink's formatting, both configured in pyproject.toml.
lint: $(VENV)/.linters
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyink --check .

# Rewrites files: pyink's formatting and ruff's safe fixes.
format: $(VENV)/.linters
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/pyink .

# Train both face encoders and the tiny video model on the synthetic world,
# sample held-out identities, print the evaluation table.
demo: install
	RUNS=$(RUNS) PY=$(PY) bash scripts/demo.sh

test: install
	$(PY) -m pytest -q tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

bench: install
	$(PY) bench/render.py
	$(PY) bench/train_step.py --quick
	$(PY) bench/sample.py

clean-demo:
	rm -rf $(RUNS)
