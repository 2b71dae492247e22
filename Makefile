# Two entry points: `make demo` and `make test`. Both create .venv when it is missing, install
# ftjax into it and fetch the real assets they need (into ~/.cache/ftjax, or $FTJAX_CACHE).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftjax-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test env assets clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

assets: $(STAMP)
	$(PY) -m ftjax.assets fetch smollm2-135m-instruct all-minilm-l6-v2 polarity

demo: assets
	$(PY) -m ftjax.cli demo

# pytest exits 5 when it collects nothing; that is not a failure of the suite's code.
test: assets
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
