# kproc: `make test` sets everything up from scratch (venv, deps, C extension) and runs
# the whole suite on both wait backends; `make bench` runs the quick benchmark suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-deps
EXT_STAMP := $(VENV)/.stamp-ext
FLOOR := benchmarks/c/futex_floor

.DEFAULT_GOAL := help
.PHONY: help venv ext test test-fast test-futex test-posix bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

$(EXT_STAMP): $(STAMP) native/kproc_native.c setup.py
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import kproc._native as n; print('kproc._native built:', n.Mem)"
	touch $@

venv: $(EXT_STAMP) ## create .venv, install dependencies, build and import the C extension

ext: $(EXT_STAMP) ## (re)build the C extension in place

test: venv ## the whole suite, futex backend then posix backend
	KPROC_BACKEND=futex $(PY) -m pytest -q
	KPROC_BACKEND=posix $(PY) -m pytest -q

test-futex: venv ## the suite on the futex backend only
	KPROC_BACKEND=futex $(PY) -m pytest -q

test-posix: venv ## the suite on the posix backend only
	KPROC_BACKEND=posix $(PY) -m pytest -q

test-fast: test-futex ## alias: one backend

$(FLOOR): benchmarks/c/futex_floor.c
	$(CC) -O2 -Wall -o $@ $< -lpthread

bench: venv $(FLOOR) ## quick benchmark suite (under 2 minutes), printed as tables
	$(PY) -m benchmarks --quick

clean: ## remove the venv and build products
	rm -rf $(VENV) build *.egg-info kproc/*.so $(FLOOR)
