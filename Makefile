# Tasks for working on fastdrop: `make <task>` from the repository root.
#   install     the package in place, with the test and docs extras (builds the extension)
#   test        the test suite on every core, then the tests that compile (-m build), as CI
#               runs them
#   lint        ruff, with the configuration in pyproject.toml (CI runs it)
#   docs        the documentation site, strict (any warning fails), into site/
#   bench       the pytest-benchmark suite in benchmarks/, then the targets (minutes)
#   bench-docs  re-measure the full tables, docs/development/benchmark-runs.md (~15 min, 2 cores)
#   vectors     rewrite tests/data/mask_stream_vectors.json: only for a deliberate change
#               of the mask stream, which docs/mask-stream.md calls a breaking change
PYTHON ?= python

.PHONY: install test lint docs bench bench-docs vectors

install:
	$(PYTHON) -m pip install -e ".[test,docs]"

test:
	$(PYTHON) -m pytest
	$(PYTHON) -m pytest -m build

lint:
	ruff check .

docs:
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir site

bench:
	PYTHONPATH=. $(PYTHON) -m pytest benchmarks/ --benchmark-only

bench-docs:
	PYTHONPATH=. $(PYTHON) benchmarks/make_docs.py

vectors:
	PYTHONPATH=. $(PYTHON) tests/data/make_mask_stream_vectors.py
