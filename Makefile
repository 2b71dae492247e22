# Entry points: `make demo`, `make test` and `make paper`. Each creates .venv when it is missing,
# installs ftjax into it and fetches the real assets it needs (into ~/.cache/ftjax, or
# $FTJAX_CACHE).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.ftjax-base
DEV_STAMP := $(VENV)/.ftjax-dev
SWEEP_STAMP := $(VENV)/.ftjax-sweep
PYTEST_WORKERS ?= 2

.PHONY: demo test paper paper-converged env assets test-assets clean

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
	touch $@ $(BASE_STAMP) $(SWEEP_STAMP)

# The sweep's plots need matplotlib (the `sweep` extra; dev includes it).
$(SWEEP_STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[sweep]'
	touch $@ $(BASE_STAMP)

env: $(DEV_STAMP)

demo: $(BASE_STAMP)
	$(PY) -m ftjax.assets fetch all-minilm-l6-v2 polarity
	$(PY) -m ftjax.cli demo

# The reduced paper comparison (experiments/paper_polarity.py): both models, every method, 3
# learning rates then 3 seeds, on a 2-core CPU. Tables and plots go to experiments/results/;
# rerunning skips finished runs. Skipping LLVM's expensive passes halves the compile time of
# each run's train step and leaves its step time unchanged (measured on all-MiniLM-L6-v2).
paper: $(SWEEP_STAMP)
	$(PY) -m ftjax.assets fetch smollm2-135m-instruct all-minilm-l6-v2 polarity
	XLA_FLAGS="$(XLA_FLAGS) --xla_llvm_disable_expensive_passes=true" \
		$(PY) -m ftjax.cli sweep experiments/paper_polarity.py:reduced

# Every method until its validation accuracy plateaus (experiments/paper_polarity.py:converged):
# many CPU hours; rerunning continues where it stopped.
paper-converged: $(SWEEP_STAMP)
	$(PY) -m ftjax.assets fetch smollm2-135m-instruct all-minilm-l6-v2 polarity
	XLA_FLAGS="$(XLA_FLAGS) --xla_llvm_disable_expensive_passes=true" \
		$(PY) -m ftjax.cli sweep experiments/paper_polarity.py:converged

# What the tests read (short real runs of the experiments); `assets` adds what only the
# experiments read (the multi-task suite's data), so CI does not build them.
TEST_ASSETS = wordnet smollm2-135m-instruct all-minilm-l6-v2 polarity squad-v1.1 wnut16 bible-es-en \
	sotu chitchat math-add-sub paraphrase-minilm-l3-v2 gemma3-270m

test-assets: $(DEV_STAMP)
	$(PY) -m ftjax.assets fetch $(TEST_ASSETS)

assets: test-assets
	$(PY) -m ftjax.assets fetch bbc-news sms-spam bible-paraphrase spdx-licenses python-code

# --dist loadfile: a test file's module fixtures (a loaded real model) are built once, on one
# worker. pytest exits 5 when it collects nothing; that is not a failure of the suite's code.
test: test-assets
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=20 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
