# streamrec — the two commands: `make demo` and `make test`. Nothing to install by hand, no Docker.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STREAMREC := $(VENV)/bin/streamrec
STAMP := $(VENV)/.streamrec-installed
PYTEST_ARGS ?=
# The embedded broker is STREAMREC_BROKER's (tansu unless set: `make test STREAMREC_BROKER=kafka`). Every
# stack started here, the tests' own in temporary folders too, shares one Apache Kafka jar cache in .stack/.
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' streamrec/shell/apache_kafka/pom.xml)
export STREAMREC_KAFKA_CACHE ?= $(CURDIR)/.stack/kafka-$(KAFKA_VERSION)

.PHONY: install demo test lint stack-up stack-down clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so the resolver never picks another build: PyPI's 2.13.0 (it carries the CUDA
# libraries, ~3 GB, and runs on the CPU). Installed after the project, torch's range could pull another.
# uv (from PyPI, into the venv) downloads in parallel: ~2 min for everything on a fresh machine where pip
# took ~4 min of a clean-clone `make test`. Where uv cannot be had, pip does the same two steps. Bytecode is
# compiled at install, as pip does: without it (and PYTHONDONTWRITEBYTECODE set, as on CI) every worker
# and CLI process the tests start compiled torch, Feast and Faust from source: the suite took 5 min more.
UV_OR_PIP = if $(VENV)/bin/uv --version >/dev/null 2>&1; then $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(1); \
	else $(PY) -m pip install --quiet --disable-pip-version-check $(1); fi
PROJECT := -c constraints.txt -e '.[dev,images]'
$(STAMP): pyproject.toml constraints.txt | $(PY)
	-$(PY) -m pip install --quiet --disable-pip-version-check 'uv==0.13.9'
	$(call UV_OR_PIP,'torch==2.13.0')
	$(call UV_OR_PIP,$(PROJECT))
	touch $@

install: $(STAMP)

# The demo starts the embedded stack itself and stops it at the end, even on failure.
demo: install
	$(STREAMREC) demo

# The suite's broker: Apache Kafka where Java and Maven exist (the jars come from Maven Central once),
# else Tansu. `make test TEST_BROKER=tansu` forces the embedded default.
TEST_BROKER ?= $(shell command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && echo kafka || echo tansu)
# The Tansu smoke path (stack cycle, round trips, the worker's ground truth, the demo pipeline) runs on a
# stack of its own beside the suite's, so `make demo`'s broker stays proven whatever the suite ran on.
SMOKE_ENV := STREAMREC_BROKER=tansu STREAMREC_STACK_DIR=$(CURDIR)/.stack/smoke STREAMREC_KAFKA_PORT=19092 \
	STREAMREC_REDIS_PORT=16379

# `make demo` runs on Tansu: its end-to-end test runs in the Tansu pass only (it is a smoke test), not
# also on Apache Kafka, to keep a clean-clone `make test` within its 20 minutes.
MAIN_PASS_ARGS := $(if $(filter tansu,$(TEST_BROKER)),,--ignore=tests/test_demo.py)

# Start the stack, run every test, stop the stack whatever pytest said; exit non-zero if any run failed.
test: install
	trap '$(STREAMREC) stack down' EXIT; export STREAMREC_BROKER=$(TEST_BROKER); \
	$(STREAMREC) stack up && $(PY) -m pytest $(MAIN_PASS_ARGS) $(PYTEST_ARGS)
	@if [ "$(TEST_BROKER)" != tansu ]; then \
	  trap 'env $(SMOKE_ENV) $(STREAMREC) stack down' EXIT; \
	  env $(SMOKE_ENV) $(STREAMREC) stack up && env $(SMOKE_ENV) $(PY) -m pytest -m smoke $(PYTEST_ARGS); \
	fi

lint: install
	$(VENV)/bin/ruff check .

stack-up: install
	$(STREAMREC) stack up

stack-down: install
	$(STREAMREC) stack down

clean:
	-$(STREAMREC) stack down
	rm -rf .stack .pytest_cache .hypothesis build *.egg-info
