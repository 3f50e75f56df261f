#!/usr/bin/env bash
# The whole suite (scripts/test.sh) under other float summation orders: OpenBLAS forced to
# each of its x86-64 kernels, 1 and 2 compute threads, and Numba generating AVX2-only code
# for a Zen 3 (NUMBA_CPU_NAME=znver3) on whatever CPU this is. A test whose tolerance holds
# on one machine only fails here. Usage: bash scripts/test_matrix.sh [VARIANT ...]
# (variants: haswell-1 haswell-2 skylakex-1 skylakex-2 sandybridge-1 sandybridge-2 znver3).
# SkylakeX needs a CPU with AVX-512; where there is none it is skipped with a note.
set -uo pipefail
cd "$(dirname "$0")/.."
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
    if env "${env[@]}" bash scripts/test.sh; then
        echo "test_matrix: $v passed"
    else
        echo "test_matrix: $v FAILED"; fail=1
    fi
done
exit $fail
