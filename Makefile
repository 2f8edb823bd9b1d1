# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNS ?= runs/demo

.PHONY: install demo test test-slow bench clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

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
