# Two entry points: `make demo` and `make test`. Both create .venv when it is missing, install
# ftjax into it and fetch the real assets they need (into ~/.cache/ftjax, or $FTJAX_CACHE).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.ftjax-base
DEV_STAMP := $(VENV)/.ftjax-dev
PYTEST_WORKERS ?= 2

.PHONY: demo test env assets clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The demo needs only the library; tests add the reference implementations (torch CPU,
# transformers, peft) and the optional data backends.
$(BASE_STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(BASE_STAMP)

env: $(DEV_STAMP)

demo: $(BASE_STAMP)
	$(PY) -m ftjax.assets fetch all-minilm-l6-v2 polarity
	$(PY) -m ftjax.cli demo

assets: $(DEV_STAMP)
	$(PY) -m ftjax.assets fetch smollm2-135m-instruct all-minilm-l6-v2 polarity

# --dist loadfile: a test file's module fixtures (a loaded real model) are built once, on one
# worker. pytest exits 5 when it collects nothing; that is not a failure of the suite's code.
test: assets
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=20 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
