"""A search space over ``train``'s config keys, read from SPACE.toml or a dict.

A space has one *axis* per searched config key (``"section.name"`` as in
:mod:`hpcnet.config`): a :class:`Categorical` (a list of values) or a
:class:`Range` (``low``..``high``, optionally log-scaled and/or integer). Besides
the axes it holds ``fixed`` config keys shared by every trial and ``search``
defaults for the search flags. SPACE.toml::

    [space]
    "optim.lr" = { low = 1e-3, high = 0.3, log = true }   # or [space.optim] lr = {...}
    "run.batch_size" = { low = 16, high = 128, log = true, int = true, num = 4 }
    "model.name" = { values = ["digits_cnn", "mlp"] }

    [fixed]
    "data.name" = "digits"

    [search]
    strategy = "de"
    population = 6

Every axis has a continuous encoding on [0, 1] (:meth:`Space.encode`), which is
where differential evolution works: ranges linearly (log ranges in log space),
integer ranges on ``[low - 0.5, high + 0.5]`` so that every integer, the ends
included, owns an equal share of the unit interval (as Optuna's integer
distributions do), categoricals by index.

Every bad space is a :class:`~hpcnet.errors.ConfigError` with one line that starts
with the file's path (or ``space`` for a dict) and names the key.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcnet.config import load_config, read_toml
from hpcnet.errors import ConfigError
from hpcnet.options import options
from hpcnet.search.axes import Axis, Categorical, Range, fits, fmt  # noqa: F401  (re-exported)
from hpcnet.search.axes import axis as make_axis
from hpcnet.search.settings import check_table

# Config keys the search itself sets, with what to do instead.
_RESERVED = {
    "run.out": "the search gives every trial its own DIR/trials/NNNN",
    "run.resume": "continue a search with --resume instead",
}


def config_fields() -> dict[str, dict[str, type]]:
    """``{section: {field: type}}`` of the declared options (:mod:`hpcnet.options`;
    types: int, float, str, bool): the config keys a space may name."""
    out: dict[str, dict[str, type]] = {}
    for o in options():
        out.setdefault(o.section, {})[o.name] = o.type
    return out


def _flatten(table: dict, where: str, origin: str, axis_specs: bool) -> dict[str, Any]:
    """``{"optim.lr": v}`` and ``{"optim": {"lr": v}}`` (TOML's nested tables and
    unquoted dotted keys) -> ``{"optim.lr": v}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: [{where}] key {key!r} must be a string")
        if "." in key:
            items = [(key, value)]
        elif isinstance(value, dict) and not (axis_specs and set(value) & {"values", "low"}):
            items = [(f"{key}.{name}", v) for name, v in value.items()]
        else:
            raise ConfigError(
                f'{origin}: [{where}] {key!r} is not a config key; write "section.name" '
                '(e.g. "optim.lr")'
            )
        for k, v in items:
            if k in out:
                raise ConfigError(f"{origin}: [{where}] {k} is given twice")
            out[k] = v
    return out


def _check_key(key: str, where: str, origin: str) -> type:
    """The config field's type; ConfigError for a key that is not a config field."""
    known = config_fields()
    section, _, name = key.partition(".")
    if section not in known:
        raise ConfigError(
            f"{origin}: [{where}] unknown config key {key!r}: no section [{section}]; "
            f"sections are {', '.join(known)}"
        )
    if name not in known[section]:
        raise ConfigError(
            f"{origin}: [{where}] unknown config key {key!r}: [{section}] has "
            f"{', '.join(known[section])}"
        )
    if key in _RESERVED:
        raise ConfigError(f"{origin}: [{where}] {key} cannot be set here: {_RESERVED[key]}")
    return known[section][name]


class Space:
    """The axes of a search, the config held fixed, and the search's flag defaults.

    Attributes:
        axes: one :class:`Categorical` or :class:`Range` per searched config key.
        fixed: ``{"section.name": value}`` every trial shares.
        search: defaults for the search flags (search options, :mod:`hpcnet.search.settings`).
        origin: the SPACE file's path, or ``space``: what error messages start with.
    """

    def __init__(
        self,
        axes: list[Axis],
        fixed: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        origin: str = "space",
    ):
        self.axes, self.origin = list(axes), origin
        self.fixed = dict(fixed or {})
        self.search = dict(search or {})
        if not self.axes:
            raise ConfigError(f"{origin}: [space] is empty; give at least one config key")
        keys = [a.key for a in self.axes]
        for k in keys:
            if keys.count(k) > 1:
                raise ConfigError(f"{origin}: [space] {k} is given twice")
            if k in self.fixed:
                raise ConfigError(
                    f"{origin}: {k} is both searched ([space]) and fixed ([fixed]); keep one"
                )

    @classmethod
    def from_dict(
        cls,
        space: dict[str, Any],
        fixed: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        *,
        origin: str = "space",
    ) -> Space:
        """A space from Python values: ``{"optim.lr": {"low": 1e-3, "high": 0.3, "log":
        True}, "model.name": ["mlp", "lenet"]}`` (a list is a categorical's values;
        nested ``{"optim": {"lr": ...}}`` works too).

        Raises:
            ConfigError: any bad key, axis, fixed value or search option (one line).
        """
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{origin}: [space] is missing or empty; give at least one key")
        axes = []
        for key, spec in _flatten(space, "space", origin, axis_specs=True).items():
            axes.append(make_axis(key, spec, _check_key(key, "space", origin), origin))
        flat_fixed = {}
        for key, value in _flatten(fixed or {}, "fixed", origin, axis_specs=False).items():
            typ = _check_key(key, "fixed", origin)
            if not fits(value, typ):
                raise ConfigError(f"{origin}: [fixed] {key} must be {typ.__name__}, got {value!r}")
            flat_fixed[key] = float(value) if typ is float else value
        search = dict(search or {})
        check_table(search, origin)
        return cls(axes, flat_fixed, search, origin=origin)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Space:
        """Reads SPACE.toml: ``[space]`` (required), ``[fixed]`` and ``[search]``.

        Raises:
            ConfigError: unreadable or invalid TOML, or any bad table (one line
                starting with ``path``).
        """
        origin = str(path)
        doc = read_toml(path, "space file")
        unknown = sorted(set(doc) - {"space", "fixed", "search"})
        if unknown:
            raise ConfigError(
                f"{origin}: unknown table [{unknown[0]}]; expected [space], [fixed], [search]"
            )
        for table in ("space", "fixed", "search"):
            if table in doc and not isinstance(doc[table], dict):
                raise ConfigError(f"{origin}: {table} must be a table ([{table}])")
        if not doc.get("space"):
            raise ConfigError(
                f"{origin}: no [space] table or an empty one; give at least one config key, "
                'e.g. "optim.lr" = { low = 0.001, high = 0.3, log = true }'
            )
        return cls.from_dict(doc["space"], doc.get("fixed"), doc.get("search"), origin=origin)

    @property
    def keys(self) -> list[str]:
        """The searched config keys, in axis order."""
        return [a.key for a in self.axes]

    def validate(self, check: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """Checks that ``train`` accepts ``fixed`` and every axis's extreme values with it
        (each value of a categorical, both ends of a range), so a bad axis is one line
        before any trial starts. Combinations of axes are not checked: a trial that
        ``train`` rejects is recorded as failed.

        Args:
            check: ``check(overrides)`` raising ConfigError for a config ``train``
                rejects; default ``load_config(None, overrides)`` (pass e.g.
                ``lambda o: load_config(config_file, o)`` to start from a file).
        Raises:
            ConfigError: ``"SPACE: optim.lr = -1: <train's message>"``.
        """
        check = check or (lambda overrides: load_config(None, overrides))
        try:
            check(dict(self.fixed))
        except ConfigError as e:
            raise ConfigError(f"{self.origin}: [fixed]: {_message(e)}") from None
        for axis in self.axes:
            for value in axis.extremes():
                try:
                    check({**self.fixed, axis.key: value})
                except ConfigError as e:
                    raise ConfigError(
                        f"{self.origin}: {axis.key} = {fmt(value)}: {_message(e)}"
                    ) from None

    def grid(self) -> list[dict[str, Any]]:
        """The cross product of every axis's grid points, first axis slowest.

        Raises:
            ConfigError: a range without ``num``.
        """
        points = [a.grid_points() for a in self.axes]
        return [dict(zip(self.keys, combo, strict=True)) for combo in itertools.product(*points)]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One random point (each axis's :meth:`Range.sample` / :meth:`Categorical.sample`)."""
        return {a.key: a.sample(rng) for a in self.axes}

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        """Params -> ``(d,) float64`` in [0, 1], one coordinate per axis."""
        return np.array([a.encode(params[a.key]) for a in self.axes], dtype=np.float64)

    def decode(self, vec: np.ndarray | list[float]) -> dict[str, Any]:
        """``(d,)`` unit-cube point (clipped) -> params (Python floats, ints, values)."""
        vec = np.asarray(vec, dtype=np.float64).reshape(-1)
        if vec.shape[0] != len(self.axes):
            raise ValueError(
                f"decode: a point of {vec.shape[0]} coordinates for {len(self.axes)} axes"
            )
        return {a.key: a.decode(u) for a, u in zip(self.axes, vec, strict=True)}

    def describe(self) -> str:
        """One line: every axis, then the fixed keys."""
        text = "; ".join(a.describe() for a in self.axes)
        if self.fixed:
            text += "; fixed " + ", ".join(f"{k}={fmt(v)}" for k, v in self.fixed.items())
        return text


def _message(e: BaseException) -> str:
    """What ``train`` would say about a bad config, on one line (its own words: they
    name the flag)."""
    return " ".join(str(e).split()) or type(e).__name__
