"""The tools a user runs beside training, on the top floor with :mod:`hpcnet.cli`:
the launcher that names a dead rank (:mod:`~hpcnet.tools.launch`), plots of finished
runs (:mod:`~hpcnet.tools.plot`), export to NumPy and PyTorch
(:mod:`~hpcnet.tools.export`), their subcommands (:mod:`~hpcnet.tools.cli`) and the
argument parser whose usage errors are one line (:mod:`~hpcnet.tools.parser`).

They read what a run wrote (:mod:`hpcnet.run`); nothing below them imports them.
"""
