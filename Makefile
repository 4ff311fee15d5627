# Build, test and demo entry points. Everything runs inside ./.venv, with every
# package, transitive ones included, held to the exact versions in
# constraints.txt. It is installed in two steps, each re-run only when its
# requirements file or constraints.txt changes (thanks to its stamp file):
# `make demo` installs requirements.txt only (bottle and requests: a
# few seconds), `make test`/`make venv` add requirements-dev.txt, and
# `make notebooks` adds requirements-notebooks.txt (JupyterLab) on top.
# Needs Python >= 3.11: `make PYTHON=python3.11 test` picks the interpreter.
#
#   make demo [PORT=8080] [DEMO_STORE=sqlite:/tmp/s.db]   run server.py + client.py
#   make test [PYTEST_ARGS='-k redis -x']                 run the test suite
#   make notebooks [NOTEBOOK_PORT=8888]                   open notebooks/ in JupyterLab
#   make constraints                                      re-pin constraints.txt
#   make bench [BENCH_ARGS=--quick]                       run every benchmark
#   make stress [STRESS_ARGS=--quick]                     load, faults, fuzzing (<= 5 min)
#   make lint | clean

# bash (not sh) for $SECONDS, traps and pipefail in the demo recipe.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
NOTEBOOKS_STAMP := $(VENV)/.installed-notebooks
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q

HOST := 127.0.0.1
# Empty means "a free port": server.py binds port 0 and says which it got.
PORT ?=
DEMO_STORE ?= memory
# Seconds to wait for the demo server to say it serves.
DEMO_WAIT ?= 10
PYTEST_ARGS ?=
# JupyterLab's port on $(HOST); empty means its default (8888, or the next free one).
NOTEBOOK_PORT ?=
# Extra options for `jupyter lab` (--no-browser on a headless machine, say).
NOTEBOOK_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv constraints demo test notebooks lint bench stress clean

help:
	@echo "targets: venv demo test notebooks lint bench stress constraints clean"

venv: $(DEV_STAMP)

# The library needs Python >= 3.11 (datetime.UTC, `isinstance(x, int | float)`):
# fail with one line before making a venv, rather than deep inside pip or
# pytest. Written so that even Python 2 runs it and prints the message. It runs
# only when a venv is (re)built, so an existing .venv keeps working whatever
# `python3` is now.
CHECK_PYTHON = command -v $(firstword $(PYTHON)) >/dev/null 2>&1 || { \
	  echo "need Python >= 3.11, found no '$(PYTHON)' on PATH; set PYTHON=python3.11" >&2; exit 1; }; \
	$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else \
	  "need Python >= 3.11, found %d.%d at %s; set PYTHON=python3.11" % (v + (sys.executable,)))'

# One .venv, filled in two steps: the demo's packages, then the development
# set on top. Two venvs would mean two installs of the shared packages and two
# sets of pins to keep in step.
#
# `python -m venv` on an existing venv is harmless and repairs a half-made one,
# so it always runs; the stamps keep these steps off the fast path.
# -c constraints.txt pins every transitive dependency too (pip also applies the
# machine's own constraint file, if its pip config names one).
$(DEMO_STAMP): requirements.txt constraints.txt
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	@echo '$(PY) -m pip install -q -r requirements.txt -c constraints.txt'
	@$(PIP_INSTALL) -r requirements.txt -c constraints.txt || { \
	  echo "make: pip install failed; after changing a requirements file, run 'make constraints'" >&2; \
	  exit 1; }
	touch $@

$(DEV_STAMP): $(DEMO_STAMP) requirements-dev.txt
	@echo '$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt'
	@$(PIP_INSTALL) -r requirements-dev.txt -c constraints.txt || { \
	  echo "make: pip install failed; after changing a requirements file, run 'make constraints'" >&2; \
	  exit 1; }
	touch $@

# JupyterLab (and its ~40 dependencies) only for `make notebooks`: `make test`
# and CI run the notebooks headless with nbclient and never install it.
$(NOTEBOOKS_STAMP): $(DEV_STAMP) requirements-notebooks.txt
	@echo '$(PY) -m pip install -q -r requirements-notebooks.txt -c constraints.txt'
	@$(PIP_INSTALL) -r requirements-notebooks.txt -c constraints.txt || { \
	  echo "make: pip install failed; after changing a requirements file, run 'make constraints'" >&2; \
	  exit 1; }
	touch $@

# Re-pin: resolve requirements-notebooks.txt (which includes the dev and demo
# sets) afresh (ignoring the current pins) in a throwaway venv and freeze it, pip and setuptools excluded. Run it after
# changing a requirements file, or to take newer transitive versions; review
# the diff and commit constraints.txt with the change.
constraints:
	@$(CHECK_PYTHON)
	@tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/generic-session-constraints.XXXXXX"); \
	trap 'rm -rf "$$tmp" constraints.txt.new' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --disable-pip-version-check -q -r requirements-notebooks.txt; \
	{ \
	  echo "# Every package of the dev venv (requirements-dev.txt, which includes"; \
	  echo "# requirements.txt) and of \`make notebooks\` (requirements-notebooks.txt:"; \
	  echo "# JupyterLab), plus all their transitive dependencies, at an exact version, so"; \
	  echo "# that every machine installs the same set: the Makefile installs with"; \
	  echo "# -r <requirements file> -c constraints.txt."; \
	  echo "# Generated by \`make constraints\` (pip freeze of a fresh venv, pip and"; \
	  echo "# setuptools excluded) with Python $$("$$tmp/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') on $$(uname -s)/$$(uname -m); do not edit by hand."; \
	  echo "# A dependency of another platform or Python only (appnope on macOS,"; \
	  echo "# legacy-cgi on Python >= 3.13, ...) is not listed, so not pinned."; \
	  echo "# To re-pin (after changing a requirements file): make constraints"; \
	  "$$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude pip --exclude setuptools; \
	} >constraints.txt.new; \
	mv constraints.txt.new constraints.txt; \
	echo "constraints.txt: $$(grep -vc '^#' constraints.txt) packages pinned; review with git diff constraints.txt"

# One shell script (hence the backslashes): start the server in the background,
# wait until it prints "Serving on http://HOST:PORT", which it does once it has
# bound its port and checked its store (a port answering is not enough: someone
# else may hold it), run the client on the port it names, and stop the server
# from an EXIT trap so it goes away even when the client fails; the recipe's
# exit status is the client's. The server's output goes to a temp file: when it
# exits instead (a busy port, an unusable store) that is its one-line reason,
# shown as is, and the recipe fails.
demo: $(DEMO_STAMP)
	@log=$$(mktemp "$${TMPDIR:-/tmp}/generic-session-demo.XXXXXX"); \
	$(PY) server.py --host $(HOST) --port '$(or $(PORT),0)' --store '$(DEMO_STORE)' >"$$log" 2>&1 & \
	pid=$$!; \
	trap 'kill "$$pid" 2>/dev/null || true; wait "$$pid" 2>/dev/null || true; rm -f "$$log"' EXIT; \
	deadline=$$((SECONDS + $(DEMO_WAIT))); \
	until port=$$(sed -n 's|^Serving on http://[^ ]*:\([0-9][0-9]*\) .*|\1|p' "$$log") && [ -n "$$port" ]; do \
	  if ! kill -0 "$$pid" 2>/dev/null; then \
	    cat "$$log" >&2; exit 1; \
	  fi; \
	  if [ "$$SECONDS" -ge "$$deadline" ]; then \
	    echo "make demo: server.py did not start serving within $(DEMO_WAIT) s; its output:" >&2; \
	    cat "$$log" >&2; exit 1; \
	  fi; \
	  sleep 0.1; \
	done; \
	$(PY) client.py --host $(HOST) --port "$$port"

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# JupyterLab on notebooks/, on the loopback interface only; the notebooks' kernel is
# this .venv's Python (ipykernel's default kernelspec, installed with it).  Ctrl-C stops it.
# As root (a container, say) Jupyter refuses to start without --allow-root.
notebooks: $(NOTEBOOKS_STAMP)
	$(PY) -m jupyterlab --notebook-dir=notebooks --ServerApp.ip=$(HOST) \
	  $(if $(NOTEBOOK_PORT),--ServerApp.port=$(NOTEBOOK_PORT)) \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy --strict generic_session.py server.py client.py

# Every benchmark in turn (about eight minutes), each one's output also kept in
# bench/results/; then every figure that has a target, with its verdict, once more.
BENCHES := overhead instructions parts asgi stores redis_ops servers
bench: venv
	@mkdir -p bench/results
	@for name in $(BENCHES); do \
	  echo "== bench/$$name.py"; \
	  $(PY) bench/$$name.py $(BENCH_ARGS) | tee bench/results/$$name.txt; \
	  echo; \
	done
	@echo "== Every figure with a target (bench/README.md explains them):"
	@cat $(addprefix bench/results/,$(addsuffix .txt,$(BENCHES))) | grep '^TARGET'

# Each part starts the servers it needs on free loopback ports (redis-server and
# redis-cli must be installed), prints its figures and fails on a broken
# invariant; all six stop within 5 minutes on 2 cores. `make test` runs the same
# scripts with --quick (tests/test_stress.py). `make stress STRESS_ARGS=--quick`
# for the short run.
STRESS_ARGS ?=
STRESS_PARTS := load sigkill redis_faults cluster fuzz resources

stress: venv
	@failed=; started=$$SECONDS; \
	for part in $(STRESS_PARTS); do \
	  echo "== stress/$$part.py"; \
	  $(PY) stress/$$part.py $(STRESS_ARGS) || failed="$$failed $$part"; \
	done; \
	echo "make stress: $$((SECONDS - started)) s"; \
	if [ -n "$$failed" ]; then echo "make stress: invariants broken in:$$failed" >&2; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
