# kproc: `make test` sets everything up from scratch (venv, dependencies, the C
# extension) and runs the whole suite on both wait backends; `make bench` runs
# the quick benchmark suite (installing the bench extra: hdrhistogram, tqdm,
# matplotlib) and writes its PNG.  Needs only python3 (with venv), a C compiler and
# make: everything else goes into .venv.  Stamps in .venv keep reruns cheap.

PYTHON ?= python3
ifeq ($(origin CC),default)
CC := gcc
endif
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST := $(PY) -m pytest -p no:cacheprovider -q $(PYTEST_ARGS)
BACKEND ?= futex
# The hotplug soak (stress-ng --cpu-online, then an echo 0/1 loop, beside per-CPU
# threads and hotplug states) runs 30 s per driver by default; the test targets
# run its short form, `make soak` its long one.
KPROC_HP_STRESS_SECONDS ?= 10
export KPROC_HP_STRESS_SECONDS

# The test targets make kproc's internal invariants (warn_on_once) raise.
test test-pure test-fast test-futex test-posix: export KPROC_STRICT = 1

DEPS_STAMP := $(VENV)/.stamp-deps
BENCH_STAMP := $(VENV)/.stamp-bench
EXT_STAMP := $(VENV)/.stamp-ext
DIST_STAMP := $(VENV)/.stamp-dist
DOCS_STAMP := $(VENV)/.stamp-docs
NATIVE_SRC := $(wildcard native/*.c native/*.h)
FLOOR := benchmarks/c/futex_floor
CWARN := -Wall -Wextra

.DEFAULT_GOAL := help
.PHONY: help venv ext lint test test-pure test-fast test-futex test-posix chaos bench floor check-c clean rt-tests stress-ng wheel docs soak FORCE

help: ## list the targets (PYTEST_ARGS=... is passed to pytest, BACKEND=... to test-fast, NO_APT=1 installs no Debian package)
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

$(DEPS_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 'setuptools>=77'
	$(PIP) install -q -e '.[test]'
	touch $@

# Rebuilt when a source changes, and whenever the built module has gone.
ifeq ($(wildcard kproc/_native*.so),)
$(EXT_STAMP): FORCE
endif
$(EXT_STAMP): $(DEPS_STAMP) $(NATIVE_SRC) setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

venv: $(EXT_STAMP) ## create .venv, install kproc[test] editable, build kproc._native in place and import it
	$(PY) -c "import kproc._native"

ext: $(EXT_STAMP) ## (re)build the C extension in place

check-c: $(DEPS_STAMP) ## compile every C source with -Werror (developer check)
	for src in $(filter %.c,$(NATIVE_SRC)); do \
		$(CC) -fsyntax-only -O2 -std=gnu11 $(CWARN) -Werror \
			-I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
			$$src || exit 1; \
	done
	$(CC) -fsyntax-only -O2 -std=gnu11 $(CWARN) -Werror benchmarks/c/futex_floor.c

lint: $(DEPS_STAMP) ## ruff over the package, tests, benchmarks, examples and docs/conf.py; mypy --strict over the package
	$(PY) -m ruff check kproc tests benchmarks chaos examples docs setup.py
	$(PY) -m mypy

# The pure-Python path (no C extension: KPROC_NATIVE=0, the posix backend): make
# test runs the files that reach its own code (pymem's atomics, locks and lists,
# the copies, the waits), test-pure the whole suite.
PURE_TESTS := tests/test_faults_signals.py tests/test_mm.py tests/test_lists.py \
	tests/test_wait_shared_channel.py tests/test_lifecycle.py tests/test_worker.py \
	tests/test_completion.py tests/test_swait.py tests/test_pool.py \
	tests/test_create_handoff.py tests/test_spare_forks.py \
	tests/test_fork_bare.py

test: venv lint stress-ng ## lint, then the whole suite twice (KPROC_BACKEND=futex, then posix), then PURE_TESTS without the C extension
	@rc=0; for backend in futex posix; do \
		echo "== KPROC_BACKEND=$$backend"; \
		skip=; [ $$backend = posix ] && skip="--ignore=tests/test_packaging.py"; \
		KPROC_BACKEND=$$backend $(PYTEST) $$skip || rc=1; \
	done; \
	echo "== KPROC_NATIVE=0 KPROC_BACKEND=posix (the pure-Python path)"; \
	KPROC_NATIVE=0 KPROC_BACKEND=posix $(PYTEST) $(PURE_TESTS) || rc=1; \
	exit $$rc

test-pure: venv stress-ng ## the whole suite once without the C extension (KPROC_NATIVE=0, posix backend)
	KPROC_NATIVE=0 KPROC_BACKEND=posix $(PYTEST) --ignore=tests/test_packaging.py

test-fast: venv stress-ng ## the whole suite once, on BACKEND (default futex)
	KPROC_BACKEND=$(BACKEND) $(PYTEST)

test-futex: venv stress-ng ## the whole suite once, on the futex backend
	KPROC_BACKEND=futex $(PYTEST)

test-posix: venv stress-ng ## the whole suite once, on the posix backend
	KPROC_BACKEND=posix $(PYTEST)

# The chaos suite (chaos/, issue #11): kill storms, lock-holder death, load, a
# fuzz, SIGINT storms, another uid; one line per experiment and backend, then
# "N passed, N failed".  About 10 minutes; make test runs its --quick form.
chaos: venv ## the chaos suite on both backends (CHAOS_ARGS=--quick for the reduced form)
	KPROC_STRICT=1 $(PY) -m chaos $(CHAOS_ARGS)

soak: export KPROC_HP_STRESS_SECONDS = 60
soak: export KPROC_STRICT = 1
soak: venv stress-ng ## hotplug soak, 60 s per driver (stress-ng --cpu-online; an echo 0/1 loop): root only
	KPROC_BACKEND=$(BACKEND) $(PYTEST) tests/test_hotplug_stress.py

$(BENCH_STAMP): $(DEPS_STAMP) pyproject.toml
	$(PIP) install -q -e '.[test,bench]'
	touch $@

$(FLOOR): benchmarks/c/futex_floor.c
	$(CC) -O2 -std=gnu11 $(CWARN) -o $@ $<

floor: $(FLOOR) ## build the C futex floor (benchmarks/c/futex_floor)

# Where `make bench` writes its JSON, histogram files and PNG.
BENCH_OUT ?= benchmarks/out
BENCH_ARGS ?= --quick

bench: venv $(BENCH_STAMP) $(FLOOR) rt-tests ## the quick suite (BENCH_ARGS=--quick): tables, then JSON, histograms and a PNG in BENCH_OUT
	mkdir -p $(BENCH_OUT)
	$(PY) -m kproc bench $(BENCH_ARGS) --json $(BENCH_OUT)/bench.json \
		--histogram $(BENCH_OUT)/histograms --png $(BENCH_OUT)/bench.png

# cyclictest is the floor delayed-work lateness is compared with; installing it
# needs root and apt, so without them (or with NO_APT=1) the benchmark says it
# is missing instead.
rt-tests: ## install cyclictest (Debian rt-tests) when root and missing (not with NO_APT=1)
	@command -v cyclictest >/dev/null 2>&1 || { [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q rt-tests >/dev/null 2>&1 || \
		echo "rt-tests not installed: the lateness benchmark runs without cyclictest"; }

# stress-ng --cpu-online drives the hotplug stress test; it needs root and apt
# to install (NO_APT=1 skips that), and real hotplug to run, so the test skips
# (saying why) without.
stress-ng: ## install stress-ng (for the hotplug stress test) when root and missing (not with NO_APT=1)
	@command -v stress-ng >/dev/null 2>&1 || { [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q stress-ng >/dev/null 2>&1 || \
		echo "stress-ng not installed: the hotplug stress test will be skipped"; }

# The wheel: built from the tracked files only (a stale build/ would bring back
# removed modules), then retagged manylinux by auditwheel (the extension needs
# only libc and libpthread, so nothing is grafted in).
$(DIST_STAMP): $(DEPS_STAMP)
	$(PIP) install -q -e '.[dist]'
	touch $@

wheel: $(DIST_STAMP) ## build a manylinux wheel into dist/ (auditwheel repair)
	rm -rf build/wheel-src build/wheel
	mkdir -p build/wheel-src dist
	git ls-files -z | xargs -0 cp --parents -t build/wheel-src
	$(PIP) wheel -q --no-deps -w build/wheel build/wheel-src
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair -w dist build/wheel/kproc-*.whl
	@ls dist/kproc-*manylinux*.whl

$(DOCS_STAMP): $(DEPS_STAMP)
	$(PIP) install -q -e '.[docs]'
	touch $@

docs: $(DOCS_STAMP) $(EXT_STAMP) ## the API reference from the docstrings (Sphinx, furo) into build/docs; warnings are errors
	$(PY) -m sphinx -W --keep-going -q -b html docs build/docs
	@echo "open build/docs/index.html"

clean: ## remove .venv and every build product
	rm -rf $(VENV) build dist *.egg-info kproc/_native*.so $(FLOOR)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

FORCE:
