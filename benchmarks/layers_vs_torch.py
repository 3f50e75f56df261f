"""hpcnet's CPU kernels against PyTorch CPU: each layer and whole training steps.

For every zoo model of ``--models`` (default mlp, lenet, 2conv, alexnet) and every
batch of ``--batches`` (default 64 and 256), two sides run, each in a fresh process
with the same thread count (``--threads``, default 2):

* ``hpcnet``: the ``cpu`` backend (Numba + OpenBLAS), :func:`hpcnet.kernels.set_threads`;
* ``torch``: PyTorch CPU, ``torch.set_num_threads``; the model is translated layer by
  layer from hpcnet's (same parameters) and checked against hpcnet's NumPy reference
  backend before it is timed (logits, loss and gradients, dropout off).

Each process measures

* ``step``: whole training steps, forward + backward + SGD step (momentum 0.9,
  lr 0.01), after warm-up steps (Numba compilation and caches, first-touch
  allocation, oneDNN primitive caches), for at least ``--seconds`` (and 5 steps);
  samples/s from the median step;
* ``layers`` (unless ``--no-layers``): each top-level layer's forward and backward on
  its real input activation, timed alone (the median of repeats).

The sides run in the order hpcnet, torch, hpcnet, torch (A B A B) per model and batch,
``--repeats`` times (default 2); the tables give the median over undisturbed runs. The
machine is shared: before each run the driver waits (up to ``--wait-idle`` s) for it
to be 80 % idle and measures from /proc/stat how much CPU other jobs took meanwhile;
runs where they took more than 10 % are left out of the medians when a clean run
exists (``_common.Disturbance``).

``--startup`` (on by default) also measures hpcnet's start-up: a fresh Python runs
``import hpcnet`` ... the first training step of 2conv at batch 64, twice in a row;
the second run (Numba's on-disk cache warm) is the figure that counts.

Inputs are random (normal images, uniform labels) with a fixed seed: the speed of
these kernels does not depend on the pixel values.

Usage::

    python -m hpcnet bench layers [--models 2conv,lenet] [--batches 64,256]
        [--threads 2] [--repeats 2] [--seconds 3] [--json OUT.json]

Needs PyTorch (a benchmark-only dependency): ``pip install torch==2.13.0``.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before any other import: the start-up figure's origin

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    add_wait_idle,
    blas_info,
    clean_runs,
    dispatch,
    disturbance,
    emit,
    env_info,
    run_for_result,
    run_meta,
    table_head,
    versions,
)
from _torch_peer import peer, require_torch  # noqa: E402

PROG = "layers_vs_torch"
SEED = 0
LR = 0.01
MOMENTUM = 0.9
CLASSES = 10
SHAPE = (1, 28, 28)
N_BATCHES = 4  # distinct pre-made batches the steps cycle through


# --------------------------------------------------------------------------- shared


def make_batches(batch: int):
    """``N_BATCHES`` random batches: x (N_BATCHES, batch, 1, 28, 28) float32, y int64."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((N_BATCHES, batch, *SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, (N_BATCHES, batch))
    return x, y


CLOCK = time.perf_counter  # the worker's clock: wall time, or CPU time with --clock cpu


def time_steps(step, warmup: int, seconds: float, min_steps: int = 5) -> list[float]:
    """Runs ``step(i)`` ``warmup`` times untimed, then until ``seconds`` have passed
    (at least ``min_steps`` times); returns each timed step's seconds (on CLOCK)."""
    for i in range(warmup):
        step(i)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    i = warmup
    while len(times) < min_steps or time.perf_counter() < t_end:
        t0 = CLOCK()
        step(i)
        times.append(CLOCK() - t0)
        i += 1
    return times


def time_pair(fwd, bwd, budget: float = 0.25, min_reps: int = 3) -> tuple[list, list]:
    """Times ``fwd()`` then ``bwd()`` in pairs (the backward needs its forward's cache)."""
    f, b = [], []
    fwd(), bwd()  # warm
    t_end = time.perf_counter() + budget
    while len(f) < min_reps or time.perf_counter() < t_end:
        t0 = CLOCK()
        fwd()
        t1 = CLOCK()
        bwd()
        t2 = CLOCK()
        f.append(t1 - t0)
        b.append(t2 - t1)
    return f, b


def layer_name(i: int, layer) -> str:
    return f"{i:02d} {type(layer).__name__}{tuple(layer.out_shape)}"


# --------------------------------------------------------------------------- workers


def worker_hpcnet(args: argparse.Namespace) -> None:
    import numba
    import numpy as np

    from hpcnet.kernels import get_backend, set_threads
    from hpcnet.nn.zoo import build_model
    from hpcnet.optim.sgd import SGD

    threads = set_threads(args.threads)
    be = get_backend("cpu")
    xs, ys = make_batches(args.batch)
    model = build_model(args.model, SHAPE, CLASSES)
    model.init(SEED)
    model.seed_dropout(SEED, 0)
    opt = SGD(model.n_params, momentum=MOMENTUM)

    def step(i: int) -> None:
        model.loss_and_grad(xs[i % N_BATCHES], ys[i % N_BATCHES], be)
        opt.step(model.params, model.grads, LR)

    steps = time_steps(step, args.warmup, args.seconds)
    layers = {}
    if args.layers:
        rng = np.random.default_rng(SEED + 1)
        h = xs[0]
        for i, layer in enumerate(model.layers):
            x_in = h
            h = layer.forward(x_in, be, True)
            dy = rng.standard_normal(h.shape, dtype=np.float32)
            # the first layer's input gradient is not computed in a step (nor by torch)
            back = layer.backward_params if i == 0 else layer.backward
            f, b = time_pair(
                lambda layer=layer, x_in=x_in: layer.forward(x_in, be, True),
                lambda back=back, dy=dy: back(dy, be),
            )
            layers[layer_name(i, layer)] = {"fwd_s": f, "bwd_s": b}
    emit(
        {
            "framework": "hpcnet",
            "threads": threads,
            "n_params": model.n_params,
            "step_s": steps,
            "samples_per_s": args.batch / statistics.median(steps),
            "layers": layers,
            "numba_threading_layer": numba.threading_layer(),
            "blas": blas_info(),
            "env": env_info(),
        }
    )


def worker_torch(args: argparse.Namespace) -> None:
    require_torch(PROG)
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    xs, ys = make_batches(args.batch)
    hp_model, net, check = peer(args.model, SHAPE, SEED, xs[0, :8], ys[0, :8])
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(xs), torch.from_numpy(ys)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(tx[i % N_BATCHES]), ty[i % N_BATCHES]).backward()
        opt.step()

    steps = time_steps(step, args.warmup, args.seconds)
    layers = {}
    if args.layers:
        rng = np.random.default_rng(SEED + 1)
        h = tx[0]
        for i, (mod, hp_layer) in enumerate(zip(net, hp_model.layers, strict=True)):
            x_in = h.detach().requires_grad_(i > 0)
            h = mod(x_in)
            dy = torch.from_numpy(rng.standard_normal(tuple(h.shape), dtype=np.float32))
            state = {}

            def fwd(mod=mod, x_in=x_in, state=state):
                state["y"] = mod(x_in)

            def bwd(dy=dy, state=state):
                if state["y"].requires_grad:
                    state["y"].backward(dy)

            f, b = time_pair(fwd, bwd)
            layers[layer_name(i, hp_layer)] = {"fwd_s": f, "bwd_s": b}
            h = h.detach()
    emit(
        {
            "framework": "torch",
            "threads": torch.get_num_threads(),
            "n_params": sum(p.numel() for p in net.parameters()),
            "step_s": steps,
            "samples_per_s": args.batch / statistics.median(steps),
            "layers": layers,
            "identity_check": check,
            "torch": torch.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "blas": blas_info(),
            "env": env_info(),
        }
    )


def worker_startup(args: argparse.Namespace) -> None:
    """Seconds from this process's start (before importing numpy or hpcnet) to the end
    of the first training step of 2conv, batch 64, on the cpu backend."""
    t_import = time.perf_counter()
    import numpy as np

    from hpcnet.kernels import get_backend, set_threads
    from hpcnet.nn.zoo import build_model
    from hpcnet.optim.sgd import SGD

    t_imported = time.perf_counter()
    set_threads(args.threads)
    be = get_backend("cpu")
    model = build_model("2conv", SHAPE, CLASSES)
    model.init(SEED)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((64, *SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, 64)
    opt = SGD(model.n_params, momentum=MOMENTUM)
    t_built = time.perf_counter()
    model.loss_and_grad(x, y, be)
    opt.step(model.params, model.grads, LR)
    t_first = time.perf_counter()
    model.loss_and_grad(x, y, be)
    opt.step(model.params, model.grads, LR)
    t_second = time.perf_counter()
    emit(
        {
            "framework": "hpcnet",
            "to_first_step_s": t_first - T_PROCESS,
            "imports_s": t_imported - t_import,
            "setup_s": t_built - t_imported,
            "first_step_s": t_first - t_built,
            "second_step_s": t_second - t_first,
        }
    )


# --------------------------------------------------------------------------- driver


def run_worker(kind: str, extra: list[str], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
           "--threads", str(args.threads), "--clock", args.clock, *extra]  # fmt: skip
    result = run_for_result(
        cmd, f"{kind} worker", PROG, timeout=args.timeout, wait_idle=args.wait_idle
    )
    result["process_wall_s"] = result["wall_s"]  # the worker process's wall time
    return result


def summarize(runs: list[dict], models: list[str], batches: list[int]) -> tuple[list, list]:
    """Per (model, batch): median samples/s of each side and hpcnet / torch; per layer:
    median forward+backward ms of each side (batch, model, layer)."""
    steps, layers = [], []
    for model in models:
        for batch in batches:
            sides = {}
            for fw in ("hpcnet", "torch"):
                every = [
                    r
                    for r in runs
                    if r["model"] == model and r["batch"] == batch and r["framework"] == fw
                ]
                if every:
                    sides[fw] = (clean_runs(every), every)
            if not sides:
                continue
            row = {"model": model, "batch": batch}
            for fw, (used, every) in sides.items():
                sps = [r["samples_per_s"] for r in used]
                row[fw] = statistics.median(sps)
                row[f"{fw}_min_max"] = (min(sps), max(sps))
                row[f"{fw}_runs"] = f"{len(used)}/{len(every)}"
            if "hpcnet" in row and "torch" in row:
                row["ratio"] = row["hpcnet"] / row["torch"]
            steps.append(row)
            names = []
            for used, _ in sides.values():
                for r in used:
                    names += [n for n in r["layers"] if n not in names]
            for name in sorted(names):
                lrow = {"model": model, "batch": batch, "layer": name}
                for fw, (used, _) in sides.items():
                    vals = [
                        statistics.median(r["layers"][name]["fwd_s"])
                        + statistics.median(r["layers"][name]["bwd_s"])
                        for r in used
                        if name in r["layers"]
                    ]
                    if vals:
                        lrow[f"{fw}_ms"] = statistics.median(vals) * 1e3
                if "hpcnet_ms" in lrow and "torch_ms" in lrow:
                    lrow["ratio"] = lrow["torch_ms"] / max(lrow["hpcnet_ms"], 1e-9)
                layers.append(lrow)
    return steps, layers


def print_tables(steps: list, layers: list, threads: int) -> None:
    print(
        f"\n# training step (forward + backward + SGD), {threads} thread(s), samples/s "
        f"(median step)"
    )
    table_head(f"{'model':<8} {'batch':>5} {'hpcnet':>9} {'torch':>9} {'hpcnet/torch':>12}  runs")
    for r in steps:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        print(
            f"{r['model']:<8} {r['batch']:>5} {r.get('hpcnet', float('nan')):>9,.0f} "
            f"{r.get('torch', float('nan')):>9,.0f} {ratio:>12}  "
            f"{r.get('hpcnet_runs', '-')} {r.get('torch_runs', '-')}"
        )
    if layers:
        print("\n# per layer, forward + backward, median ms ('speed-up' = torch ms / hpcnet ms)")
        table_head(
            f"{'model':<8} {'batch':>5} {'layer':<34} {'hpcnet':>8} {'torch':>8} {'speed-up':>8}"
        )
        for r in layers:
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
            print(
                f"{r['model']:<8} {r['batch']:>5} {r['layer']:<34} "
                f"{r.get('hpcnet_ms', float('nan')):>8.2f} "
                f"{r.get('torch_ms', float('nan')):>8.2f} {ratio:>8}"
            )


def driver(args: argparse.Namespace) -> None:
    from hpcnet.nn.zoo import MODELS

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        sys.exit(f"{PROG}: --models {args.models!r}: choose from {', '.join(MODELS)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or args.repeats < 1 or args.threads < 1:
        sys.exit(f"{PROG}: need --batches of positive ints, --repeats >= 1, --threads >= 1")
    sides = [s for s in args.sides.split(",") if s]
    if not set(sides) <= {"hpcnet", "torch"} or not sides:
        sys.exit(f"{PROG}: --sides is a comma-separated subset of hpcnet,torch")
    if "torch" in sides:
        require_torch(PROG)
    meta = {
        **run_meta(),
        "versions": versions(),
        "config": {
            "models": models,
            "batches": batches,
            "threads": args.threads,
            "repeats": args.repeats,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "clock": args.clock,
            "lr": LR,
            "momentum": MOMENTUM,
        },
    }
    print(
        f"# {meta['date']}  {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), "
        f"{args.threads} thread(s) per side",
        flush=True,
    )
    runs = []
    for rep in range(args.repeats):
        for model in models:
            for batch in batches:
                for fw in sides:
                    extra = ["--model", model, "--batch", str(batch), "--seconds",
                             str(args.seconds), "--warmup", str(args.warmup)]  # fmt: skip
                    if not args.layers:
                        extra.append("--no-layers")
                    r = run_worker(fw, extra, args)
                    r.update(model=model, batch=batch, repeat=rep)
                    runs.append(r)
                    print(
                        f"  repeat {rep} {model:<8} batch {batch:<4} {fw:<7} "
                        f"{r['samples_per_s']:>9,.0f} samples/s  ({disturbance(r)})",
                        flush=True,
                    )
    startup = []
    if args.startup:
        for i in range(2):
            r = run_worker("startup", [], args)
            startup.append(r)
            print(
                f"  start-up run {i + 1}: {r['to_first_step_s']:.2f} s from process start "
                f"to the end of the first 2conv step (imports {r['imports_s']:.2f} s, "
                f"first step {r['first_step_s']:.2f} s, next step {r['second_step_s']:.2f} s)",
                flush=True,
            )
    steps, layers = summarize(runs, models, batches)
    hp = [r for r in runs if r["framework"] == "hpcnet"]
    blas = [d for d in hp[0]["blas"] if "numpy" in (d.get("filepath") or "")] if hp else []
    if blas:
        print(
            f"# hpcnet BLAS: {blas[0].get('internal_api')} {blas[0].get('version')} "
            f"kernel {blas[0].get('architecture')}; Numba threading layer "
            f"{hp[0]['numba_threading_layer']}"
        )
    print_tables(steps, layers, args.threads)
    if startup:
        print(
            f"\n# start-up (second run, Numba cache warm): "
            f"{startup[-1]['to_first_step_s']:.2f} s from process start to the end of the "
            "first training step"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {**meta, "steps": steps, "layers": layers, "startup": startup, "runs": runs},
                indent=1,
            )
        )
        print(f"# raw timings written to {args.json}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hpcnet bench layers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--models", default="mlp,lenet,2conv,alexnet", help="comma-separated")
    p.add_argument("--batches", default="64,256", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=2, help="compute threads of each side")
    p.add_argument("--sides", default="hpcnet,torch", help="run in this order (A B A B)")
    p.add_argument("--repeats", type=int, default=2, help="runs of every side (median)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds of steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each layer's forward and backward")  # fmt: skip
    p.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure hpcnet's start-up (import to first step)")  # fmt: skip
    p.add_argument("--timeout", type=int, default=600, help="seconds per worker run")
    add_wait_idle(p)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the workers time: wall time, or this process's CPU time (only with "
        "--threads 1: robust to other jobs on a shared machine, blind to waiting)",
    )
    p.add_argument("--json", default=None, help="write every raw timing here")
    p.add_argument("--worker", choices=("hpcnet", "torch", "startup"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global CLOCK
    args = parse_args(argv)
    if args.worker in ("hpcnet", "startup"):
        from hpcnet.kernels import set_blas_env_defaults

        set_blas_env_defaults()  # as python -m hpcnet does, before NumPy loads
    if args.clock == "cpu":
        if args.threads != 1:
            sys.exit(f"{PROG}: --clock cpu needs --threads 1 (CPU time adds threads up)")
        CLOCK = time.process_time
    dispatch(args, driver, hpcnet=worker_hpcnet, torch=worker_torch, startup=worker_startup)


if __name__ == "__main__":
    main()
