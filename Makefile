# make demo: install everything, train or reuse the teacher, search on Fashion-MNIST (runs/demo).
# make test: install everything, run the test suite.
# Re-running skips what is already done (venv, dataset, teacher checkpoint).

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.autocomp-installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install data bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

data: $(FASHION)

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: install data
	$(PY) examples/fashion_mnist/train_teacher.py
	rm -rf runs/demo
	$(VENV)/bin/autocomp search examples/fashion_mnist/search.yaml --out runs/demo

test: install data
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) -m pytest -q tests

bench: install data
	$(PY) benchmarks/int8_latency.py

clean:
	rm -rf runs .pytest_cache
