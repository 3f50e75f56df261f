"""The only code that touches raw MPI: the library communicator, sub-communicators
for roles, collectives on flat buffers, and abort-on-exception."""

from hpcnet.comm.waits import (
    Backoff,
    Deadlines,
    barrier_polling,
    node_workers_first,
    poll_until,
    probe_polling,
    wait_polling,
)
from hpcnet.comm.world import (
    abort,
    exit_on_error,
    install_abort_hook,
    library_comm,
    ranks_on_node,
    root_then_bcast,
    same_on_every_rank,
    set_error_report,
    world_rank,
    world_size,
)

__all__ = [
    "Backoff",
    "Deadlines",
    "poll_until",
    "probe_polling",
    "barrier_polling",
    "wait_polling",
    "abort",
    "exit_on_error",
    "same_on_every_rank",
    "set_error_report",
    "install_abort_hook",
    "library_comm",
    "node_workers_first",
    "ranks_on_node",
    "root_then_bcast",
    "world_rank",
    "world_size",
]

from hpcnet.comm.collectives import (  # noqa: E402
    RoleComms,
    allgather_objects,
    allgather_ranges,
    allreduce_max_ints,
    allreduce_mean_,
    allreduce_sum,
    bcast_,
    bcast_object,
    gather_objects,
    split_role_comms,
)

__all__ += [
    "RoleComms",
    "allgather_objects",
    "allgather_ranges",
    "allreduce_max_ints",
    "allreduce_mean_",
    "allreduce_sum",
    "bcast_",
    "bcast_object",
    "gather_objects",
    "split_role_comms",
]
