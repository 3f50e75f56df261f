# hpcnet developer targets. PY is the Python of your virtual environment.
PY ?= python
MPIEXEC ?= $(dir $(shell command -v $(PY)))mpiexec
PYTEST = $(PY) -m pytest -q -p no:cacheprovider

.PHONY: test test-unit test-mpi lint bench

test: test-unit test-mpi

test-unit:
	$(PYTEST) tests/unit tests/e2e

test-mpi:
	$(MPIEXEC) -n 2 $(PYTEST) --with-mpi tests/mpi
	$(MPIEXEC) -n 4 $(PYTEST) --with-mpi tests/mpi

lint:
	$(PY) -m ruff check hpcnet tests benchmarks

bench:
	$(PY) benchmarks/sync_vs_torch.py
