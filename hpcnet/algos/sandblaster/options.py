"""Sandblaster's settings (``[lbfgs]``); :data:`OPTIONS` is declared when the algorithm
is registered."""

from __future__ import annotations

from hpcnet.options import Option, section

section("lbfgs", "Sandblaster L-BFGS (Dean et al. 2012, sec. 4.2)")

OPTIONS = (
    Option("lbfgs.m", 10, "sandblaster: L-BFGS history pairs", flag="--lbfgs-m",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("lbfgs.unit_size", 0, "sandblaster: rows per work unit (0: a tenth of a replica's "
           "share)", check=lambda v: v >= 0, must="must be >= 0 (0: automatic)"),
    Option("lbfgs.units_per_push", 4, "sandblaster: kept units a replica sums before pushing",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("lbfgs.batch", 0, "sandblaster: rows per evaluation pass (0: the whole training "
           "split)", flag="--lbfgs-batch", check=lambda v: v >= 0,
           must="must be >= 0 (0: all rows)"),
    Option("faults.coordinator_dies_at", -1, "sandblaster: the coordinator SIGKILLs its own "
           "process after ACCEPT of this iteration, before COMMIT (-1: never)",
           check=lambda v: v >= -1, must="must be an iteration or -1"),
)  # fmt: skip
