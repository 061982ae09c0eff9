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
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' streamrec/apache_kafka/pom.xml)
export STREAMREC_KAFKA_CACHE ?= $(CURDIR)/.stack/kafka-$(KAFKA_VERSION)

.PHONY: install demo test lint stack-up stack-down clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: the CPU wheel for 2.13.0 lies on this machine's disk. Installed after the
# project, the torch requirement would make pip fetch a multi-GB CUDA build instead.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check 'torch==2.13.0'
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,images]'
	touch $@

install: $(STAMP)

# The demo starts the embedded stack itself and stops it at the end, even on failure.
demo: install
	$(STREAMREC) demo

# Start the stack, run every test, stop the stack whatever pytest said; exit with pytest's status.
test: install
	trap '$(STREAMREC) stack down' EXIT; $(STREAMREC) stack up && $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

stack-up: install
	$(STREAMREC) stack up

stack-down: install
	$(STREAMREC) stack down

clean:
	-$(STREAMREC) stack down
	rm -rf .stack .pytest_cache .hypothesis build *.egg-info
