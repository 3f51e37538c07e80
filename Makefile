# fedmq: `make test` and `make demo` create .venv/ when it is missing, install fedmq into it
# (editable, with test and data extras) and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedmq-installed
BROKER ?=

.PHONY: test test-fast demo bench broker clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	@bash .ci/broker.sh
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not amqp and not slow"

demo: $(STAMP)
	$(PY) examples/seed_s4_model_averaging.py

bench: $(STAMP)
	$(PY) benchmarks/pointer_overhead.py

broker:
	@bash .ci/broker.sh

clean:
	rm -rf $(VENV) .pytest_cache runs
