"""Options declared by their owners: the registry :mod:`hpcnet.config` assembles.

Every setting of a run is an :class:`Option`: a key ``"section.name"`` (its TOML
section and field), a default (whose type is the option's type), one line of help,
its command-line flag, and the check its value must pass. Whoever reads a setting
declares it next to its code, once, when its module is imported:

- :mod:`hpcnet.config`: the settings of every run (``[run]``, ``[data]``, ``[model]``,
  ``[optim]``, and ``[algo]``'s name and layout);
- each algorithm module (``hpcnet.algos.avg`` declares ``--avg-every``, Downpour its
  ``[ps]`` section, Sandblaster ``[lbfgs]``), :mod:`hpcnet.modelpar` its scheme.

A check that spans several settings (an option only one algorithm reads, two that
cannot be combined) is a :func:`rule`, declared by the same owner. ``--help``, the
docs' flag table (``docs/_ext/hpcnet_flags.py``), config files and the search's
spaces all read this registry, so none of them can disagree with the code.

This module imports nothing of hpcnet but :mod:`hpcnet.errors`: it sits at the
bottom, below everything that declares options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcnet.errors import ConfigError

TYPES = (bool, int, float, str, tuple)  # tuple: an array in a config file, no flag


@dataclass(frozen=True)
class Option:
    """One setting.

    Attributes:
        key: ``"section.name"``: the TOML section and field (``"algo.avg_every"``).
        default: the value when nothing sets it; its type (bool, int, float, str, or
            tuple: a TOML array, set in config files only) is the option's type.
        help: one line for ``--help`` and the docs' flag table.
        flag: the command-line flag; "" derives it from the name (``--avg-every``).
        choices: the allowed values, if a fixed list (checked; listed in the help).
        check: ``check(value) -> bool``, False for a bad value; ``must`` says what a
            good one is (e.g. ``must be >= 1``), in the error naming the flag.
        must: see ``check``.
    """

    key: str
    default: Any
    help: str
    flag: str = ""
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    must: str = ""

    def __post_init__(self):
        section, _, name = self.key.partition(".")
        if not section or not name.isidentifier() or "." in name:
            raise ValueError(f"option key {self.key!r}: expected 'section.name'")
        if type(self.default) not in TYPES:
            raise ValueError(f"option {self.key}: default {self.default!r} is not one of {TYPES}")
        if self.type is tuple:  # an array: config files only, named as in them
            object.__setattr__(self, "flag", f"[{section}] {name}")
        elif not self.flag:
            object.__setattr__(self, "flag", "--" + name.replace("_", "-"))
        if self.check is not None and not self.must:
            raise ValueError(f"option {self.key}: a check needs its 'must' text")

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def metavar(self) -> str:
        """What ``--help`` shows for its value: ``{a,b}`` for listed choices, else the
        type (``INT``, ``FLOAT``, ``STR``)."""
        if self.choices:
            return "{" + ",".join(map(str, self.choices)) + "}"
        return self.type.__name__.upper()

    def add_flag(self, parser: Any, dest: str, help: str) -> None:
        """Adds its flag to an argparse parser or argument group, unset by default (so a
        config file's value is not overridden): ``--flag VALUE``, or ``--flag`` /
        ``--no-flag`` for a bool, with the value at ``dest``. An array (tuple) option
        has no flag: config files only."""
        if self.type is tuple:
            return
        if self.type is bool:
            parser.add_argument(
                self.flag,
                dest=dest,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help,
            )
            return
        parser.add_argument(
            self.flag, dest=dest, type=self.type, default=None, metavar=self.metavar, help=help
        )

    def typed(self, value: Any) -> Any:
        """``value`` as the option's type: an int where a float is wanted becomes one.

        Raises:
            TypeError: a value of another type (a bool is no int or float).
        """
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is tuple and isinstance(value, list):  # a TOML array
            value = tuple(value)
        if not isinstance(value, self.type) or (isinstance(value, bool) and self.type is not bool):
            kind = "an array" if self.type is tuple else self.type.__name__
            raise TypeError(f"must be {kind}, got {value!r}")
        return value

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (of the right type), or None."""
        if self.choices and value not in self.choices:
            names = [str(c) for c in self.choices]
            return "choose " + (" or ".join(names) if len(names) < 3 else ", ".join(names))
        if self.check is not None and not self.check(value):
            return self.must
        return None


class Registry:
    """Declared options, by key, and the whole-config rules over them.

    Two registries exist: :data:`TRAIN` (a run's settings, which the module-level
    functions below use) and the search's (:mod:`hpcnet.search.settings`), so a search
    strategy's options never appear among ``train``'s.

    Args:
        what: what its options configure, in error messages (``train``, ``search``).
    """

    def __init__(self, what: str):
        self.what = what
        self._options: dict[str, Option] = {}
        self._owners: dict[str, str] = {}
        self._sections: dict[str, str] = {}  # section -> one line: what it holds
        self._rules: list[tuple[str, Callable[[Any], None]]] = []

    def section(self, name: str, doc: str) -> None:
        """Declares the section ``[name]`` with one line saying what it holds (the docs'
        table heading). Declaring it again with the same text changes nothing.

        Raises:
            ValueError: declared before with another text.
        """
        if self._sections.get(name, doc) != doc:
            raise ValueError(f"section [{name}] is declared twice, differently")
        self._sections[name] = doc

    def declare(self, *options: Option, owner: str) -> None:
        """Adds ``options``, each under its key; ``owner`` names the module, algorithm or
        strategy that reads them (shown in errors and the docs). Their section must be
        declared first (:meth:`section`). Declaring the same option again, by the same
        owner, changes nothing (a module imported twice).

        Raises:
            ValueError: a key or flag another owner declared, or an undeclared section.
        """
        flags = {o.flag: k for k, o in self._options.items()}
        for o in options:
            if o.section not in self._sections:
                raise ValueError(f"option {o.key}: section [{o.section}] is not declared")
            if o.key in self._options and (
                self._options[o.key] != o or self._owners[o.key] != owner
            ):
                raise ValueError(f"option {o.key} is declared by {self._owners[o.key]} already")
            if flags.get(o.flag, o.key) != o.key:
                raise ValueError(f"flag {o.flag} ({o.key}) is taken by {flags[o.flag]}")
            self._options[o.key] = o
            self._owners[o.key] = owner
            flags[o.flag] = o.key

    def rule(self, owner: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
        """Decorator: declares a check over a whole resolved config (``fn(cfg)``, raising
        :class:`~hpcnet.errors.ConfigError` through :func:`need`), run after every
        option's own check, in declaration order. The same function again changes
        nothing."""

        def add(fn: Callable[[Any], None]) -> Callable[[Any], None]:
            if not any(f.__qualname__ == fn.__qualname__ and o == owner for o, f in self._rules):
                self._rules.append((owner, fn))
            return fn

        return add

    def options(self) -> list[Option]:
        """Every declared option, in declaration order."""
        return list(self._options.values())

    def option(self, key: str) -> Option:
        """The option ``"section.name"``.

        Raises:
            KeyError: no such option is declared.
        """
        return self._options[key]

    def owner(self, key: str) -> str:
        """Who declared option ``key``."""
        return self._owners[key]

    def sections(self) -> dict[str, str]:
        """``{section: what it holds}``, in declaration order."""
        return dict(self._sections)

    def rules(self) -> list[Callable[[Any], None]]:
        """The whole-config checks, in declaration order."""
        return [fn for _, fn in self._rules]

    def flag_for(self, key: str) -> str:
        """The flag of option ``key``, or ``[section] name`` for an unknown key."""
        o = self._options.get(key)
        if o is not None:
            return o.flag
        section, _, name = key.partition(".")
        return f"[{section}] {name}"


TRAIN = Registry("train")  # a run's settings: what hpcnet.config assembles

# The train registry's methods, as functions (what an algorithm's module calls).
section = TRAIN.section
declare = TRAIN.declare
rule = TRAIN.rule
options = TRAIN.options
option = TRAIN.option
owner = TRAIN.owner
sections = TRAIN.sections
rules = TRAIN.rules
flag_for = TRAIN.flag_for


def need(cfg: Any, ok: bool, key: str, what: str, registry: Registry = TRAIN) -> None:
    """In a rule: raises ConfigError ``"{flag} {value!r}: {what}"`` unless ``ok``.

    Raises:
        ConfigError: ``ok`` is false; the message names the flag of ``key``.
    """
    if not ok:
        section_name, name = key.split(".", 1)
        value = getattr(getattr(cfg, section_name), name)
        raise ConfigError(f"{registry.flag_for(key)} {value!r}: {what}")
