# fedmq: `make test` and `make demo` create .venv/ when it is missing, install fedmq into it
# (editable, with test and data extras) and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedmq-installed
BROKER ?=

.PHONY: test test-fast lint-imports demo bench broker clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -rf fedmq.egg-info  # setuptools' by-product; the install's metadata lives in $(VENV)
	@touch $(STAMP)

test: $(STAMP)
	@bash .ci/broker.sh
	$(VENV)/bin/lint-imports --cache-dir $(VENV)/.import_linter_cache
	$(PY) -m pytest -q

lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --cache-dir $(VENV)/.import_linter_cache

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not amqp and not slow"

# `make demo` walks through the seed: §4 (model averaging on a secure worker, in-process; prints
# its losses), then the main job, §14: alice (digits 0-3), bob (4-6), charlie (7-9) and a testing worker,
# 40 rounds of 10 batches of 32, lr 0.1, evaluation on rounds 1, 11, 21, 31, 40. In-process by
# default; `make demo BROKER=amqp://guest:guest@127.0.0.1:5672/` starts the worker services as
# processes and runs the rounds over RabbitMQ. Results in runs/seed-s14-mnist5k/ (a second demo
# takes the next free name, runs/seed-s14-mnist5k-2/, ...: a run is never written over).
DEMO_ARGS ?= --dataset mnist5k --workers alice:0-3,bob:4-6,charlie:7-9 --testing testing \
	--rounds 40 --batch-size 32 --batches 10 --lr 0.1 --eval-every 10
demo: $(STAMP)
	$(PY) examples/seed_s4_model_averaging.py
	$(PY) -m fedmq.cli train $(DEMO_ARGS) $(if $(BROKER),--url $(BROKER) --launch,)

bench: $(STAMP)
	$(PY) benchmarks/pointer_overhead.py

broker:
	@bash .ci/broker.sh

clean:
	rm -rf $(VENV) .pytest_cache runs
