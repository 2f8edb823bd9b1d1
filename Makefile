# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNS ?= runs/demo
# Exact versions (CI and `make install`); pyproject.toml keeps the ranges.
LOCK := requirements-lock.txt

.PHONY: install demo long-video test test-slow lint format bench clean-demo install-app test-app

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The web app's extra (python -m idjax.app) and Playwright for its browser test, at
# exact versions. Gradio 6 needs pillow < 13, so the lock's pillow pin is left out.
$(VENV)/.app: $(VENV)/.installed $(LOCK)
	grep -v '^pillow==' $(LOCK) > $(VENV)/app-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/app-constraints.txt -e '.[app]' gradio==6.31.0 playwright==1.65.2
	touch $@

install-app: $(VENV)/.app

# The app's tests, the browser test included (it drives the system Chromium:
# apt-get install -y chromium); -rs prints why a test was skipped.
test-app: $(VENV)/.app
	$(PY) -m pytest -q -rs -m 'slow or not slow' tests/test_app.py tests/test_app_browser.py

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

# After `make demo`: fine-tune its video model on 16-frame clips and evaluate
# both at 240 frames (docs/long_video.md).
long-video: install
	RUNS=$(RUNS) PY=$(PY) bash scripts/long_video.sh

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
