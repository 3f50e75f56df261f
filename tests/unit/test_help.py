"""``--help`` teaches: each subcommand says what it does, flags come grouped by section
with their defaults and choices, every flag has a help text, and an unknown flag or
config key is answered with the closest known one (issue 27, point 5)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hpcnet.cli import build_parser
from hpcnet.config import load_config
from hpcnet.errors import ConfigError


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every subcommand, nested ones too (``data import``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def test_every_subcommand_says_what_it_does_and_every_flag_has_help():
    for name, sub in _subparsers(build_parser()):
        if name == "launch":  # its own parser (hpcnet.tools.launch), checked below
            continue
        assert sub.description and ":class:" not in sub.description, name
        assert "``" not in sub.description, f"{name}: Sphinx markup in --help"
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"


def test_train_help_groups_flags_with_defaults_and_lists_the_algorithms():
    text = dict(_subparsers(build_parser()))["train"].format_help()
    assert "--algo {sync,avg,downpour,sandblaster}" in text
    for group in ("[run]:", "[optim]:", "[data]:", "[model]:", "[algo]:", "[ps]:"):
        assert group in text, group
    assert "[default 0.05; [optim] lr]" in text


@pytest.mark.parametrize(
    "argv, hint",
    [(["train", "--lrr", "0.1"], "(did you mean --lr?)"),
     (["train", "--batchsize", "8"], "(did you mean --batch-size?)"),
     (["train", "--xyzzy"], "")],
)  # fmt: skip
def test_an_unknown_flag_gets_the_closest_known_one(argv, hint):
    with pytest.raises(ConfigError, match="unrecognized arguments") as e:
        build_parser().parse_args(argv)
    assert str(e.value).endswith(hint) and str(e.value).count("\n") == 0


def test_an_unknown_config_key_or_section_gets_the_closest_known_one(tmp_path):
    (tmp_path / "a.toml").write_text("[optim]\nmomentun = 0.5\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'momentun' in \[optim\] \(did you mean momentum\?\)"
    ):  # noqa: E501
        load_config(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text("[optm]\nlr = 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown section \[optm\] \(did you mean optim\?\)"):
        load_config(str(tmp_path / "b.toml"))


def test_launch_and_bench_name_themselves_as_typed():
    launch = subprocess.run(
        [sys.executable, "-m", "hpcnet", "launch", "--help"], capture_output=True, text=True
    )
    assert (
        launch.stdout.startswith("usage: python -m hpcnet launch [-h] -n N")
        and "ARGS" in (launch.stdout.splitlines()[0])
    )
    bench = subprocess.run(
        [sys.executable, "-m", "hpcnet", "bench", "sync", "-h"], capture_output=True, text=True
    )
    assert bench.returncode == 0 and bench.stdout.startswith("usage: python -m hpcnet bench sync")
