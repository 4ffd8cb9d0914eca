# Two entry points for a fresh clone: `make demo` (the main job) and `make test` (the full suite,
# what CI runs). Both create or reuse .venv and install from the lock (constraints.txt: the exact
# versions the suite was verified with); the install re-runs when pyproject.toml or the lock changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt
# A test whose worker process dies (a segmentation fault inside XLA's CPU compiler, seen about once
# per full run and never alone: docs/testing.md) runs once more; failures of any other kind do not,
# since --only-rerun matches no assertion or error of the suite.
PYTEST := $(PY) -m pytest -q -n 2 --reruns=1 --only-rerun='^fastnst_no_failure_is_rerun$$'

.PHONY: demo test test-fast lint install lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) bin/demo

# The full suite, slow tests included (CI: .ci/run).
test: $(STAMP)
	$(PY) -m ruff check fastnst bin tests
	$(PYTEST)

# The developer's loop: everything but the tests marked `slow` (notebook, kill -9, subprocess runs).
test-fast: $(STAMP)
	$(PY) -m ruff check fastnst bin tests
	$(PYTEST) -m 'not slow'

lint: $(STAMP)
	$(PY) -m ruff check fastnst bin tests

# Refresh the lock: resolve the newest versions pyproject.toml admits in a throw-away venv, freeze
# them into constraints.txt; then run `make test` and commit the lock if it passes.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ echo "# Exact versions 'make demo', 'make test' and CI install (pip -c). Refresh: make lock."; \
	  echo "# Resolved on $$(uname -sm), Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())')."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v -e '^setuptools==' -e '^wheel=='; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .jax_cache
