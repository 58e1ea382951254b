# The two commands of the README: `make book` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JB     := $(BIN)/jupyter-book
EXECUTED := tests/_executed

.PHONY: setup book test unit notebooks nbval smoke-book ipynb bench clean clean-cache

## setup: create .venv and install the book with every extra (pyproject.toml is the one dependency list)
# pip installs without compiling (pip runs on one core); compileall then writes the .pyc
# files with one process per core. They are needed: where PYTHONDONTWRITEBYTECODE is set (it
# is on this machine), a module without a .pyc is compiled again by every process that imports
# it (a make test without them: 790 s of CPU instead of 590, one run each under load 3-5). Not
# compiled: the packages' test folders and the packages nothing here imports (networkx, pip, setuptools,
# prompt_toolkit, jedi, pkg_resources), 5,280 of 15,495 files, none of which a whole make test
# read (file access times after one); that cuts compileall's CPU from 61 s to 36 s. A module
# left out still works: it is compiled when imported. Like pip, compileall skips the few files
# this Python cannot compile (torch ships a test file written for Python 3.12), hence -qq and
# `|| true`.
NOT_COMPILED = (?<!astropy)/tests?/|/site-packages/(networkx|pip|setuptools|prompt_toolkit|jedi|pkg_resources)/
# The venv's own pip (Python 3.11's bundled 23.2) is replaced first by the current one, which
# resolves the same 155 packages (checked with --dry-run --report) in less than half the CPU
# time (10 s against 23 s here: it checks the wheel tags of ~80,000 index links faster).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[all]'
	$(BIN)/python -m compileall -qq -j 0 -x '$(NOT_COMPILED)' $(VENV)/lib || true
	touch $(STAMP)

setup: $(STAMP)

# jupyter-cache re-executes a chapter only when its code cells change; the chapters' numbers
# also depend on helpers/ and data/, so a change there clears the execution cache and the
# Sphinx build (which otherwise rereads only changed pages)
CODE_SHA = $(shell find helpers data -type f ! -name '*.pyc' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)

## book: execute every chapter at its default parameters (cached by jupyter-cache) and build the HTML
book: setup
	@if [ "$$(cat .jupyter_cache/code.sha 2>/dev/null)" != "$(CODE_SHA)" ]; then \
		echo "helpers/ or data/ changed since the last build: every chapter runs again"; \
		rm -rf .jupyter_cache _build; fi
	# progress bars go to stderr, which -W turns into a failure: none in the book build
	TQDM_DISABLE=1 $(JB) build . -W --keep-going
	@mkdir -p .jupyter_cache && echo "$(CODE_SHA)" > .jupyter_cache/code.sha
	@echo "Book written to _build/html/index.html"

# nbval re-executes only the chapters that have cells marked `# NBVAL_CHECK_OUTPUT` (found by
# grep; today every chapter but Scaling out, which has none): those cells must print exactly what
# the papermill run printed. The second run reads what the first one cached (surveys, PPCA fits,
# rates, StarNet and StarCLIP runs, embeddings), so it checks two things: every seeded computation
# that is not cached (selections, bootstraps, retrieval, kNN and few-shot fits) gives
# the same numbers again, and a result read back from the cache prints what the fresh one printed.
# A chapter without marked cells is not run a second time: papermill already ran every cell, nbval
# would check nothing.
NBVAL_NOTEBOOKS = $(patsubst notebooks/%.md,$(EXECUTED)/notebooks/%.ipynb,$(shell grep -l '^\# NBVAL_CHECK_OUTPUT' notebooks/*.md))

## test: unit tests + harness rules + every chapter once by papermill at smoke parameters,
##       then nbval on the chapters with checked outputs beside a book build from them
# Two pytest-xdist workers (the machine has 2 cores): the chapters run in two chains, one per
# worker, each whole and in order (tests/conftest.py, tests/notebook_tools.py), beside the unit
# tests. nbval and the smoke book only read the executed notebooks: they run side by side.
# One OpenMP/BLAS thread per process (torch, OpenBLAS): two busy workers fill the two cores,
# and threads that spin-wait for each other do not fight over a core.
test: export OMP_NUM_THREADS = 1
test: setup
	rm -rf $(EXECUTED)
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests
	@echo "nbval: $(notdir $(NBVAL_NOTEBOOKS))"
	$(MAKE) --no-print-directory -j 2 --output-sync=target nbval smoke-book

# nbval and smoke-book read what `make test`'s pytest step wrote to tests/_executed
nbval:
	if [ -n "$(NBVAL_NOTEBOOKS)" ]; then $(BIN)/python -m pytest -p no:cacheprovider -n 2 --dist loadfile \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg $(NBVAL_NOTEBOOKS); fi

smoke-book:
	$(BIN)/python tests/build_smoke_book.py $(EXECUTED)

## ipynb: write the paired .ipynb of every chapter, one way (never committed)
ipynb: setup
	$(BIN)/jupytext --to ipynb notebooks/*.md

## bench: run the benchmarks (figures go to benchmarks/results/ and the README)
bench: setup
	$(BIN)/python -m pip install --quiet -e '.[all,bench]'
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf _build $(EXECUTED) notebooks/*.ipynb

clean-cache:
	rm -rf .cache .jupyter_cache
