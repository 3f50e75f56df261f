"""``python -m hpcnet SUBCOMMAND``: train (the default), data, info, bench, plot, export,
search, launch, grow.

Run under MPI: ``mpiexec -n 4 python -m hpcnet train --data fashion-mnist``. Every rank
parses the same arguments and validates them before any communication, so a bad flag or
config file gives the same one-line error on every rank (printed once) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from hpcnet._version import __version__
from hpcnet.errors import AlreadyFinished, HpcnetError
from hpcnet.run.preempt import Preempted, PreemptionWatch
from hpcnet.tools.parser import Parser

SUBCOMMANDS = ("train", "data", "info", "bench", "plot", "export", "search", "launch", "grow")
# ``python -m hpcnet bench NAME [ARGS]`` runs benchmarks/SCRIPT.py ARGS (a source checkout);
# NAME is the first word of SCRIPT. Every script in benchmarks/ (not _private) is here.
BENCHMARKS = {
    "layers": "layers_vs_torch",  # kernels per layer and training steps vs PyTorch CPU
    "sync": "sync_vs_torch",  # sync data parallelism vs PyTorch CPU and DDP
    "overlap": "allreduce_overlap",  # sync: one allreduce vs buckets overlapped with backward
    "modelpar": "modelpar_bench",  # model parallelism: step time and bytes against M
    "ps": "ps_vs_rma",  # parameter server fetch/push vs raw mpi4py RMA
    "downpour": "downpour_vs_sync",  # Downpour throughput vs sync on the same cores
    "adagrad": "adagrad_vs_sgd",  # Downpour: Adagrad vs fixed-rate SGD at the shard (plot)
    "batch": "batch_vs_async",  # Sandblaster L-BFGS vs Downpour and sync (plot)
    "ssp": "ssp_tradeoff",  # Downpour bounded staleness: idle and time against s (plot)
    "scale": "scale_model",  # cost model: fit here, validate on 1-8 ranks, predict a cluster
    "compress": "compress",  # sync's allreduce as fp16/bf16 against float32: accuracy, bytes
}


def build_parser() -> argparse.ArgumentParser:
    import hpcnet.algos  # noqa: F401  the built-in algorithms declare their options
    from hpcnet.config import add_train_flags
    from hpcnet.data.cli import add_data_parser
    from hpcnet.tools.cli import add_export_parser, add_plot_parser

    p = Parser(
        prog="python -m hpcnet",
        description="DistBelief-style distributed training "
        "on MPI. Start with mpiexec -n N python -m hpcnet [train] ...",
    )
    p.add_argument("--version", action="version", version=f"hpcnet {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    t = sub.add_parser(
        "train",
        help="train a model (the default subcommand)",
        description="Trains a model on every rank of the job: the ranks take the roles the "
        "algorithm's layout gives them (replicas, parameter shards, a coordinator). Flags "
        "override --config, which overrides the defaults shown.",
    )
    add_train_flags(t)
    _list_algorithms(t)
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data and layout for this world size, print the plan, train nothing",
    )
    t.set_defaults(func=_cmd_train)
    i = sub.add_parser(
        "info",
        help="the role layout, compute backend and MPI library",
        description="Prints what a job started with the same flags would get: each rank's "
        "role, the compute backend and threads, the GPU, the MPI library and mpiexec, and "
        "with --model and --data the model's summary table. Takes train's flags; trains "
        "nothing.",
    )
    add_train_flags(i)
    _list_algorithms(i)
    i.set_defaults(func=_cmd_info)
    add_data_parser(sub)
    _add_search_parser(sub)
    b = sub.add_parser(
        "bench",
        help="side-by-side benchmarks: against PyTorch, raw MPI and each other "
        "(needs a source checkout; some need PyTorch or matplotlib)",
        description="Runs benchmarks/SCRIPT.py with the remaining arguments: "
        + ", ".join(f"{k} ({v}.py)" for k, v in BENCHMARKS.items())
        + ". Pass -h after the name for its options.",
    )
    b.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    b.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    b.set_defaults(func=_cmd_bench)
    add_plot_parser(sub)
    add_export_parser(sub)
    g = sub.add_parser(
        "grow",
        help="ask a running downpour job (started with --max-replicas) for more replicas",
        description="Writes OUT/grow-request.json; shard 0 of the run in OUT takes it "
        "within a second, and the run spawns the replicas (MPI_Comm_spawn), which fetch "
        "the parameters and train. Its output says when they joined, or why not.",
    )
    g.add_argument("out", metavar="OUT", help="the running job's output directory")
    g.add_argument("-n", type=int, default=1, metavar="K", help="replicas to add (default 1)")
    g.set_defaults(func=_cmd_grow)
    sub.add_parser(  # listed for --help; main() hands 'launch' over before any MPI starts
        "launch",
        help="python -m hpcnet launch -n N [--mpiexec CMD] ARGS: mpiexec -n N python -m "
        "hpcnet ARGS, with one line naming a rank that dies by a signal",
        add_help=False,
    )
    return p


def _list_algorithms(parser: argparse.ArgumentParser) -> None:
    """``--algo``'s metavar lists the registered algorithms (they register after the
    option is declared)."""
    from hpcnet.algos import algorithm_names

    for action in parser._actions:
        if action.dest == "algo.name":
            action.metavar = "{" + ",".join(algorithm_names()) + "}"


def _add_search_parser(sub) -> None:
    import hpcnet.search  # noqa: F401  the built-in strategies declare their options
    from hpcnet.search.settings import SEARCH
    from hpcnet.search.strategy import get_strategy, strategy_names

    s = sub.add_parser(
        "search",
        help="hyper-parameter search: trials are training runs on rank groups",
        description="Search over train's config keys with a registered strategy ("
        + "; ".join(f"{n}: {get_strategy(n).doc}" for n in strategy_names())
        + "); each trial is a run on a group of --group-size ranks. A setting comes from "
        "its flag, else the SPACE file's [search] table, else its default. Flags after -- "
        "are train flags every trial shares.",
    )
    s.add_argument("--space", required=True, metavar="SPACE.toml", help="the search space")
    for o in SEARCH.options():  # the search's settings, then each strategy's own
        o.add_flag(s, o.name, f"{o.help} [default {o.default!r}]")
    s.add_argument("--config", metavar="FILE.toml", help="train config every trial starts from")
    s.add_argument("--resume", action="store_true", help="continue the search in --out")
    s.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train flags")
    s.set_defaults(func=_cmd_search)


def _cmd_search(args) -> int:
    import hpcnet.search as search
    from hpcnet.comm import library_comm, same_on_every_rank
    from hpcnet.config import add_train_flags
    from hpcnet.search.settings import SEARCH, default, resolve
    from hpcnet.search.strategy import get_strategy

    with same_on_every_rank():
        space = search.Space.load(args.space)
        given = {o.name: getattr(args, o.name) for o in SEARCH.options()}
        name = given["strategy"] or space.search.get("strategy") or default("strategy")
        entry = get_strategy(name)
        rest = [a for a in args.train_args if a != "--"]
        tp = Parser(prog="python -m hpcnet search ... --")
        add_train_flags(tp)
        tp.add_argument("--dry-run", action="store_true")  # as train's: check, train nothing
        targs = tp.parse_args(rest)
        fixed = {k: v for k, v in vars(targs).items() if v is not None and "." in k}
        settings = resolve(
            {**given, "strategy": name, "config_file": args.config or targs.config,
             "resume": args.resume},
            space.search,
            strategy_options=entry.options,
            origin=str(args.space),
        )  # fmt: skip
    if targs.dry_run:
        _search_dry_run(space, settings, fixed)
        return 0
    search.run_search(space, settings=settings, fixed=fixed, comm=library_comm())
    return 0


def _search_dry_run(space, settings, fixed: dict) -> None:
    """Checks the space, every grid point's config and layout on a group, prints the plan."""
    from hpcnet.algos import get_algorithm
    from hpcnet.comm import library_comm, same_on_every_rank
    from hpcnet.config import load_config
    from hpcnet.errors import ConfigError
    from hpcnet.layout import layout_for
    from hpcnet.search.settings import metric_for
    from hpcnet.search.strategy import get_strategy

    comm = library_comm()
    size, gs = comm.Get_size(), settings.group_size
    with same_on_every_rank():
        if gs < 1 or size % gs:
            raise ConfigError(f"--group-size {gs}: {size} ranks do not split into groups of it")
        space.validate()
        points = space.grid() if settings.strategy == "grid" else []
        for params in points:
            cfg = load_config(settings.config_file, {**space.fixed, **fixed, **params})
            layout_for(cfg, gs, get_algorithm(cfg.algo.name))
        total = get_strategy(settings.strategy).make(space, settings).total
    if comm.Get_rank() == 0:
        n = total if total is not None else "?"
        print(
            f"hpcnet search: {size} ranks in {size // gs} group(s) of {gs}; strategy "
            f"{settings.strategy}, {n} trials over {space.describe()}; metric "
            f"{metric_for(settings, {**space.fixed, **fixed})} ({settings.direction}); results "
            f"would go to {settings.out}"
        )
        print("dry run: nothing trained")


def _config_from(args):
    from hpcnet.comm import same_on_every_rank
    from hpcnet.config import load_config, resume_base

    with same_on_every_rank():  # no communication yet: every rank sees the same error
        return load_config(resume_base(args.config, vars(args).get("run.resume")), vars(args))


def _cmd_train(args) -> int:
    from mpi4py import MPI

    from hpcnet.algos import train
    from hpcnet.comm import library_comm

    cfg = _config_from(args)
    if MPI.Comm.Get_parent() != MPI.COMM_NULL:  # spawned in place of a dead process
        from hpcnet.algos.lifecycle import join

        join(cfg)
        return 0
    if args.dry_run:
        from hpcnet.algos.dryrun import dry_run

        dry_run(cfg, library_comm())
        return 0
    train(cfg, library_comm())
    return 0


def _cmd_grow(args) -> int:
    from hpcnet.algos.downpour.grow import request

    path = request(args.out, args.n)
    print(
        f"asked the run in {args.out} for {args.n} more replica(s) ({path}); its output "
        "says when they joined, or why not"
    )
    return 0


def _cmd_info(args) -> int:
    import numba
    from mpi4py import MPI

    from hpcnet.algos import get_algorithm
    from hpcnet.comm import library_comm, same_on_every_rank
    from hpcnet.kernels import cuda_available
    from hpcnet.layout import layout_for
    from hpcnet.tools.mpi_info import mpiexec_lines

    cfg = _config_from(args)
    comm = library_comm()
    with same_on_every_rank():
        layout = layout_for(cfg, comm.Get_size(), get_algorithm(cfg.algo.name))
        asked = getattr(args, "model.name", None) or getattr(args, "data.name", None)
        model_text = _model_summary(cfg, layout) if asked else ""  # no communication
    if comm.Get_rank() == 0:
        import os

        from threadpoolctl import threadpool_info

        algo = get_algorithm(cfg.algo.name)
        print(f"hpcnet {__version__}")
        print(f"algorithm: {algo.name}: {algo.doc}")
        if algo.all_flags:
            print(f"  its flags: {' '.join(algo.all_flags)}")
        print(f"layout: {layout.describe()}")
        for rank, role in layout.table():
            print(f"  rank {rank:>3}: {role}")
        blas = ", ".join(
            f"{i['internal_api']} {i.get('version', '')} "
            f"({i.get('architecture', '?')}, {i['num_threads']} threads)"
            for i in threadpool_info()
            if i["user_api"] == "blas"
        )
        print(
            f"compute: cpu backend, {os.cpu_count()} cores, numba {numba.__version__} "
            f"({numba.config.NUMBA_NUM_THREADS} threads max), BLAS: {blas or 'none found'}"
        )
        print(f"gpu: {'CUDA GPU found' if cuda_available() else 'none (no CUDA GPU found)'}")
        print(
            f"mpi: {MPI.Get_library_version().splitlines()[0].strip()} "
            f"(MPI {'.'.join(map(str, MPI.Get_version()))}), mpi4py "
            f"{__import__('mpi4py').__version__}"
        )
        for line in mpiexec_lines():
            print(line)
        from hpcnet.comm import ft

        print(f"fault tolerance: {ft.describe().split('fault tolerance: ', 1)[1]}")
        if model_text:
            print(model_text)
    return 0


def _model_summary(cfg, layout) -> str:
    """``info --model SOURCE --data DATA``: the model's summary table for the data."""
    from hpcnet.data.format import open_dataset
    from hpcnet.data.registry import resolve_data
    from hpcnet.nn.summary import summary_table
    from hpcnet.nn.zoo import run_model

    info = open_dataset(resolve_data(cfg.data.name))
    model = run_model(cfg.model, cfg.data.name, info.image_shape, info.num_classes)
    return f"data: {info.path} {info.image_shape}, {info.num_classes} classes\n" + summary_table(
        model, shards=max(layout.shards, 1), replicas=layout.replicas
    )


def _cmd_bench(args) -> int:
    import subprocess
    from pathlib import Path

    from hpcnet.errors import ConfigError

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{BENCHMARKS[args.name]}.py"
    if not script.is_file():
        raise ConfigError(
            f"bench {args.name}: {script} not found; the benchmarks ship with the source "
            "checkout (git clone), not with an installed package"
        )
    prog = f"python -m hpcnet bench {args.name}"  # its usage line's name, not the script's
    run = "import os, sys; script = sys.argv.pop(2); sys.argv[0] = sys.argv.pop(1); "
    run += "sys.path.insert(0, os.path.dirname(script)); exec(compile(open(script).read(), "
    run += "script, 'exec'), {'__name__': '__main__', '__file__': script})"
    return subprocess.run([sys.executable, "-c", run, prog, str(script), *args.args]).returncode


def main(argv: list[str] | None = None, loading: PreemptionWatch | None = None) -> None:
    """Entry point: parses, runs the subcommand, exits with its status.

    Exit status: 0 success (also ``--resume`` of a finished run); 2 bad input (flag,
    config, layout, data), raised on every rank alike; 128+signal after a SIGTERM,
    SIGUSR1 or SIGINT (Ctrl-C), checkpointed; 124 a stall (``--timeout``); anything else
    aborts the MPI job (status 1). ``loading``: the watch ``python -m hpcnet`` set up
    before loading this module (a signal then is the command's).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help", "--version"):
        argv.insert(0, "train")
    if loading is not None and argv[0] not in ("train", "search"):
        loading.close()  # not a training command: Ctrl-C interrupts it the usual way
        if loading.signum:
            sys.exit(128 + loading.signum)
        loading = None
    if argv[0] == "launch":  # the launcher is no MPI process: it starts mpiexec
        from hpcnet.tools.launch import main as launch

        try:
            sys.exit(launch(argv[1:]))
        except HpcnetError as e:
            sys.stderr.write(f"hpcnet: error: {e}\n")
            sys.exit(e.exit_code)
    from hpcnet.kernels import set_blas_env_defaults
    from hpcnet.run.ranks import note_rank

    set_blas_env_defaults()  # before anything loads NumPy (and its OpenBLAS)
    note_rank()  # for a launcher watching the ranks (python -m hpcnet launch)
    from hpcnet.comm import exit_on_error, install_abort_hook, same_on_every_rank

    install_abort_hook()
    try:
        with same_on_every_rank():  # parsing and config checks communicate nothing
            args = build_parser().parse_args(argv)
        # SIGUSR1/SIGTERM (Slurm's --signal, a preemption) outside the training loop: noted,
        # never a rank killed mid-MPI; the run that starts after it stops at its first step
        # boundary, checkpointed (hpcnet.run.preempt); after the end it changes nothing
        outer = PreemptionWatch() if argv[0] in ("train", "search") else None
        try:
            code = args.func(args)
        finally:
            if outer is not None:
                outer.close()
            if loading is not None:
                loading.close()
    except AlreadyFinished as e:  # raised alike on every rank: not an error
        from hpcnet.comm import world_rank

        if world_rank() == 0:
            sys.stderr.write(f"hpcnet: {e}\n")
        code = e.exit_code
    except HpcnetError as e:
        code = exit_on_error(e)
    except Preempted as e:  # every rank stopped at the same step, checkpointed
        from hpcnet.comm import world_rank

        if world_rank() == 0:
            sys.stderr.write(f"hpcnet: {e}\n")
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    from hpcnet.comm.ft import leave

    leave(code)  # tells a launcher the status; skips a finalize that could wait for ever
