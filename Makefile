# hpcnet developer targets. PY is the Python of your virtual environment.
PY ?= python
MPIEXEC ?= $(dir $(shell command -v $(PY)))mpiexec
PYTEST = $(PY) -m pytest -q -p no:cacheprovider

.PHONY: test test-unit test-mpi lint docs bench

test: test-unit docs test-mpi

test-unit:
	$(PYTEST) tests/unit tests/e2e

test-mpi:
	$(MPIEXEC) -n 2 $(PYTEST) --with-mpi tests/mpi
	$(MPIEXEC) -n 4 $(PYTEST) --with-mpi tests/mpi

lint:
	$(PY) -m ruff check hpcnet tests benchmarks scripts docs

# the documentation site (docs/), warnings as errors, as scripts/test.sh builds it in CI
docs:
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench:
	$(PY) benchmarks/sync_vs_torch.py
