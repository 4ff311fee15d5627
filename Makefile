# Build, test and demo entry points. Everything runs inside ./.venv, which
# `make venv` creates from requirements-dev.txt (re-run only when those
# requirement files change, thanks to the stamp file).
#
#   make demo [PORT=8080] [DEMO_STORE=sqlite:/tmp/s.db]   run server.py + client.py
#   make test [PYTEST_ARGS='-k redis -x']                 run the test suite
#   make lint | bench | clean

# bash (not sh) for /dev/tcp, traps and pipefail in the demo recipe.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

HOST := 127.0.0.1
# Empty means "pick a free port" (see the demo recipe).
PORT ?=
DEMO_STORE ?= memory
# Seconds to wait for the demo server to listen.
DEMO_WAIT ?= 10
PYTEST_ARGS ?=

.PHONY: help venv demo test lint bench clean

help:
	@echo "targets: venv demo test lint bench clean"

venv: $(STAMP)

# `python -m venv` on an existing venv is harmless and repairs a half-made one,
# so it always runs; the stamp keeps this whole step off the fast path.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

# One shell script (hence the backslashes): start the server in the background,
# poll until its port accepts a connection, run the client, and stop the server
# from an EXIT trap so it goes away even when the client fails; the recipe's
# exit status is the client's. The server's log goes to a temp file, shown only
# when the server fails to come up.
demo: venv
	@port='$(PORT)'; \
	if [ -z "$$port" ]; then \
	  port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("$(HOST)", 0)); print(s.getsockname()[1]); s.close()'); \
	fi; \
	log=$$(mktemp "$${TMPDIR:-/tmp}/generic-session-demo.XXXXXX"); \
	$(PY) server.py --host $(HOST) --port "$$port" --store '$(DEMO_STORE)' >"$$log" 2>&1 & \
	pid=$$!; \
	trap 'kill "$$pid" 2>/dev/null || true; wait "$$pid" 2>/dev/null || true; rm -f "$$log"' EXIT; \
	deadline=$$((SECONDS + $(DEMO_WAIT))); \
	until (exec 3<>"/dev/tcp/$(HOST)/$$port") 2>/dev/null; do \
	  if ! kill -0 "$$pid" 2>/dev/null; then \
	    echo "make demo: server.py exited before listening on $(HOST):$$port; its output:" >&2; \
	    cat "$$log" >&2; exit 1; \
	  fi; \
	  if [ "$$SECONDS" -ge "$$deadline" ]; then \
	    echo "make demo: server.py did not answer on $(HOST):$$port within $(DEMO_WAIT) s; its output:" >&2; \
	    cat "$$log" >&2; exit 1; \
	  fi; \
	  sleep 0.1; \
	done; \
	$(PY) client.py --host $(HOST) --port "$$port"

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy --strict generic_session.py server.py client.py

bench: venv
	$(PY) bench/overhead.py
	$(PY) bench/stores.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
