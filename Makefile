# Two entry points for a fresh clone: `make demo` (the main job) and `make test`.
# Both create or reuse .venv; the install re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) bin/demo

test: $(STAMP)
	$(PY) -m ruff check fastnst bin configs tests
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(PY) -m ruff check fastnst bin configs tests

clean:
	rm -rf $(VENV) runs
