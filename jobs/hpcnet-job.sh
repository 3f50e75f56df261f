# Sourced by the job scripts in jobs/: runs `python -m hpcnet train ARGS` under srun,
# resumes when OUT already holds a checkpoint (a requeued job), and requeues the job when
# the run stopped for a signal with its checkpoint written (exit 138 for SIGUSR1, sent by
# `#SBATCH --signal=USR1@120` two minutes before the time limit; 143 for SIGTERM, sent on
# preemption). Every algorithm resumes from its checkpoints.
#
# Settings (environment): OUT (default runs/$SLURM_JOB_ID), HPCNET_LAUNCH (default srun;
# e.g. "mpiexec -n 4" off a cluster), HPCNET_EXTRA (more flags, e.g. --dry-run).
# Usage, in a job script:  source "$(dirname "$0")/hpcnet-job.sh"; hpcnet_job FLAGS...

# Your site's MPI and Python (placeholders: adapt to your cluster).
# module load openmpi/4.1 python/3.11
# source ~/venvs/hpcnet/bin/activate   # pip install -e /path/to/hpcnet (no [mpich]: site MPI)

# Converted datasets are cached here; convert once before the job with
#   python -m hpcnet data fetch fashion-mnist   (or data import-idx DIR --out FILE.h5)
export HPCNET_DATA=${HPCNET_DATA:-$HOME/.cache/hpcnet}

hpcnet_job() {
    local out=${OUT:-runs/${SLURM_JOB_ID:-local}}
    local where=(--out "$out" --overwrite)   # no checkpoint yet: nothing to lose
    if [ -f "$out/checkpoint.h5" ]; then
        where=(--resume "$out")   # a requeued job goes on from its newest checkpoint
    fi
    # shellcheck disable=SC2086  # HPCNET_LAUNCH and HPCNET_EXTRA are word lists
    ${HPCNET_LAUNCH:-srun} python -m hpcnet train "$@" \
        --threads "${SLURM_CPUS_PER_TASK:-1}" "${where[@]}" ${HPCNET_EXTRA:-}
    _hpcnet_requeue_on_signal $? "$out"
}

# After a run or search that stopped for SIGUSR1 (138) or SIGTERM (143), checkpointed:
# requeue the job (it resumes OUT when it starts again); returns the status it was given.
_hpcnet_requeue_on_signal() {
    local status=$1 out=$2
    if [ "$status" -eq 138 ] || [ "$status" -eq 143 ]; then
        echo "hpcnet-job: stopped by a signal, checkpointed in $out; requeueing" >&2
        if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
            scontrol requeue "$SLURM_JOB_ID"
        fi
    fi
    return "$status"
}

# A search (python -m hpcnet search FLAGS): the search directory is OUT; on SIGUSR1 or
# SIGTERM it checkpoints its running trials and stops (138/143, requeued); a requeued job
# continues it with --resume (finished trials stay finished, stopped ones resume).
hpcnet_search() {
    local out=${OUT:-runs/search-${SLURM_JOB_ID:-local}}
    local again=()
    if [ -f "$out/search.json" ]; then
        again=(--resume)   # a requeued job: finished trials stay finished
    fi
    # shellcheck disable=SC2086  # HPCNET_LAUNCH and HPCNET_EXTRA are word lists
    ${HPCNET_LAUNCH:-srun} python -m hpcnet search "$@" --out "$out" "${again[@]}" \
        -- --threads "${SLURM_CPUS_PER_TASK:-1}" ${HPCNET_EXTRA:-}
    _hpcnet_requeue_on_signal $? "$out"
}
