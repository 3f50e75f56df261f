"""A slow phase says so (issue 27, point 7): a line once it passes the mark and one with
its time (and count) at its end; a quick one, or a rank that does not print, says
nothing. The kernel count comes from Numba's own record of compiled signatures."""

from __future__ import annotations

import time

import numpy as np

from hpcnet.run.phases import phase


def test_a_slow_phase_gets_a_line_then_its_time(capsys):
    with phase("compiling things", say=True, after=0.05) as status:
        time.sleep(0.2)
        status["done"] = "3 kernels"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "hpcnet: compiling things ..."
    assert lines[1].startswith("hpcnet: compiling things: done in 0.") and lines[1].endswith(
        "s (3 kernels)"
    )


def test_a_quick_phase_or_a_silent_rank_says_nothing(capsys):
    with phase("quick", say=True, after=5.0):
        pass
    with phase("silent", say=False, after=0.0):
        time.sleep(0.05)
    assert capsys.readouterr().out == ""


def test_the_kernel_count_is_numbas_compiled_signatures():
    from hpcnet.algos.warmup import compiled_kernels
    from hpcnet.kernels import cpu

    before = compiled_kernels()
    x = np.linspace(-1, 1, 1 << 17, dtype=np.float64).astype(np.float32)
    cpu.relu_forward(x)  # a large array: the compiled loop, in float32
    cpu.relu_forward(x.reshape(2, -1))
    after = compiled_kernels()
    assert after >= before and after >= 1
    cpu.relu_forward(x)  # the same types again: no new signature, counted once
    assert compiled_kernels() == after


def test_log_every_0_is_about_20_lines_however_many_epochs():
    from hpcnet.algos.budget import StepBudget
    from hpcnet.config import load_config

    cfg = load_config(None, {"run.epochs": 400, "run.batch_size": 32})
    budget = StepBudget.of(cfg, n_train=1437, replicas=2)
    assert 18 <= budget.total_steps // budget.log_every <= 21
