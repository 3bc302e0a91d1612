# ptrader: the two quick-start commands and their pieces. Needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: validate test install install-dev export-check nbtest pytest bench clean

validate: install            ## install, then run the main job on the bundled real data
	$(BIN)/ptrader validate

test: install-dev export-check nbtest pytest   ## install with dev tools, then run every test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

export-check:                ## the committed package must be what the notebooks export
	$(BIN)/nbdev_export
	@if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- ptrader; then \
	  echo "ptrader/ differs from what nbdev_export writes from nbs/: run nbdev_export and commit"; git diff --stat -- ptrader; exit 1; fi

nbtest:                      ## notebook cells (slow and cuda cells skipped; add FLAGS="slow" to run them)
	$(BIN)/nbdev_test --n_workers 2 $(if $(FLAGS),--flags "$(FLAGS)")

pytest:
	$(BIN)/python -m pytest -q tests

bench:                       ## benchmarks against peers (needs the bench extra)
	$(BIN)/pip install -q -e ".[dev,bench]"
	for f in tests/bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
