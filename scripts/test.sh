#!/usr/bin/env bash
# The whole test suite: one-process tests, then the MPI tests under 2 and 4 ranks.
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
for n in 2 4; do
    step timeout 900 "$MPIEXEC" -n $n "${PYTEST[@]}" -q --with-mpi tests/mpi
done
exit $fail
