VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/cxrsynth demo

bench: $(STAMP)
	$(PY) bench/phantom.py
	$(PY) bench/data.py
	$(PY) bench/train.py
	$(PY) bench/sample.py
	$(PY) bench/evaluate.py
	$(PY) bench/audit.py
	$(PY) bench/dp.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
