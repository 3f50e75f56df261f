"""``python -m hpcnet`` -> :func:`hpcnet.cli.main`."""

from hpcnet.run.preempt import PreemptionWatch

# a signal (Ctrl-C, SIGTERM) while Python loads MPI, NumPy and Numba: noted, not a
# traceback on every rank; the command's own watch starts with it (hpcnet.run.preempt)
_loading = PreemptionWatch()

from hpcnet.cli import main  # noqa: E402

if __name__ == "__main__":
    main(loading=_loading)
