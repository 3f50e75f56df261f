#!/usr/bin/env bash
# The whole suite (scripts/test.sh) under other float summation orders: OpenBLAS forced to
# each of its x86-64 kernels, 1 and 2 compute threads, and Numba generating AVX2-only code
# for a Zen 3 (NUMBA_CPU_NAME=znver3) on whatever CPU this is. A test whose tolerance holds
# on one machine only fails here. Usage: bash scripts/test_matrix.sh [VARIANT ...]
# (variants: haswell-1 haswell-2 skylakex-1 skylakex-2 sandybridge-1 sandybridge-2 znver3).
# Usage with --mpi: bash scripts/test_matrix.sh --mpi [VARIANT ...]
# SkylakeX needs a CPU with AVX-512; where there is none it is skipped with a note.
# --mpi: only the tests that compare float32 training across rank counts, partitions and
# backends (tests/mpi under 2 and 4 ranks, the CUDA-simulator cases), about 3 minutes a
# variant instead of the whole suite's 15.
set -uo pipefail
cd "$(dirname "$0")/.."
suite=(bash scripts/test.sh)
if [ "${1:-}" = --mpi ]; then
    shift
    PY=${PY:-python}
    MPIEXEC=$(dirname "$(command -v "$PY")")/mpiexec
    suite=(bash -c "set -e; for n in 2 4; do timeout 900 $MPIEXEC -n \$n $PY -m pytest -q -p no:cacheprovider --with-mpi tests/mpi; done; $PY -m pytest -q -p no:cacheprovider tests/unit/test_kernels_cuda.py")
fi
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(haswell-1 haswell-2 skylakex-1 skylakex-2 sandybridge-1 sandybridge-2 znver3)
fail=0
for v in "${variants[@]}"; do
    kernel=${v%-*}
    threads=${v##*-}
    env=()
    case $v in
        znver3) env=(NUMBA_CPU_NAME=znver3 NUMBA_CPU_FEATURES= OPENBLAS_CORETYPE=Haswell) ;;
        *)
            if [ "$kernel" = skylakex ] && ! grep -q avx512f /proc/cpuinfo; then
                echo "test_matrix: $v skipped (no AVX-512 on this CPU)"; continue
            fi
            env=(OPENBLAS_CORETYPE=${kernel^} OPENBLAS_NUM_THREADS=$threads NUMBA_NUM_THREADS=$threads)
            ;;
    esac
    echo "test_matrix: === $v: ${env[*]}"
    if env "${env[@]}" "${suite[@]}"; then
        echo "test_matrix: $v passed"
    else
        echo "test_matrix: $v FAILED"; fail=1
    fi
done
exit $fail
