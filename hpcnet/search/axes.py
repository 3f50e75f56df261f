"""The axes of a search space: :class:`Categorical` (listed values) and :class:`Range`
(``low``..``high``, optionally log-scaled and/or integer), each with its grid points,
its samples and its continuous encoding on [0, 1] (:mod:`hpcnet.search.space`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from hpcnet.errors import ConfigError

_RANGE_OPTIONS = ("low", "high", "log", "int", "num")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def fmt(v: Any) -> str:
    """A value as a message shows it (floats with %g, strings quoted)."""
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


class Categorical:
    """An axis of listed values (numbers, strings, booleans), e.g. model names.

    Args:
        key: the config key, ``"section.name"``.
        values: the values, non-empty, no duplicates.
        origin: what error messages start with (the SPACE file's path).
    Raises:
        ConfigError: no values, a duplicate, or a value that is not a number or string.
    """

    def __init__(self, key: str, values: Iterable[Any], *, origin: str = "space"):
        self.key, self.origin = key, origin
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise ConfigError(f"{origin}: {key}: values must be a list, got {values!r}")
        self.values = list(values)
        if not self.values:
            raise ConfigError(f"{origin}: {key}: values is empty; give at least one value")
        for i, v in enumerate(self.values):
            if not isinstance(v, int | float | str):
                raise ConfigError(f"{origin}: {key}: values must be numbers or strings, got {v!r}")
            if v in self.values[:i]:
                raise ConfigError(f"{origin}: {key}: value {v!r} is listed twice")

    def grid_points(self) -> list[Any]:
        """Every value, in the order given."""
        return list(self.values)

    def sample(self, rng: np.random.Generator) -> Any:
        """One value, each equally likely."""
        return self.values[int(rng.integers(len(self.values)))]

    def encode(self, value: Any) -> float:
        """The middle of the value's cell: ``(index + 0.5) / len(values)``."""
        try:
            i = self.values.index(value)
        except ValueError:
            raise ConfigError(
                f"{self.origin}: {self.key}: {value!r} is not one of {self.values!r}"
            ) from None
        return (i + 0.5) / len(self.values)

    def decode(self, u: float) -> Any:
        """``values[min(int(u * len), len - 1)]``, ``u`` clipped to [0, 1]."""
        n = len(self.values)
        return self.values[min(int(min(max(float(u), 0.0), 1.0) * n), n - 1)]

    def extremes(self) -> list[Any]:
        """The values a trial may take that ``train`` must accept: all of them."""
        return list(self.values)

    def describe(self) -> str:
        return f"{self.key} in {{{', '.join(fmt(v) for v in self.values)}}}"


class Range:
    """A numeric axis ``low``..``high``.

    Args:
        key: the config key, ``"section.name"``.
        low, high: the ends, ``low < high`` (whole numbers when ``integer``).
        log: uniform in log space (needs ``low > 0``), for learning rates and sizes.
        integer: values are rounded to ints.
        num: points for grid search (>= 2), spaced linearly or geometrically.
        origin: what error messages start with (the SPACE file's path).
    Raises:
        ConfigError: ``low >= high``, a log range through or at 0, ``num < 2``,
            non-numeric ends, fractional ends of an integer range.
    """

    def __init__(
        self,
        key: str,
        low: float,
        high: float,
        log: bool = False,
        integer: bool = False,
        num: int | None = None,
        *,
        origin: str = "space",
    ):
        self.key, self.origin = key, origin
        for name, v in (("low", low), ("high", high)):
            if not _number(v) or not math.isfinite(v):
                raise ConfigError(f"{origin}: {key}: {name} must be a finite number, got {v!r}")
        for name, v in (("log", log), ("int", integer)):
            if not isinstance(v, bool):
                raise ConfigError(f"{origin}: {key}: {name} must be true or false, got {v!r}")
        if not low < high:
            raise ConfigError(f"{origin}: {key}: low = {low} must be < high = {high}")
        if log and low <= 0:
            raise ConfigError(
                f"{origin}: {key}: a log range needs low > 0, got low = {low} "
                "(drop log = true or raise low)"
            )
        if integer and (low != int(low) or high != int(high)):
            raise ConfigError(
                f"{origin}: {key}: an int range needs whole-number ends, got {low}..{high}"
            )
        if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 2):
            raise ConfigError(f"{origin}: {key}: num must be an int >= 2 points, got {num!r}")
        self.low, self.high = (int(low), int(high)) if integer else (float(low), float(high))
        self.log, self.integer, self.num = log, integer, num
        # the continuous interval [0, 1] maps onto (in log space for log ranges)
        lo, hi = (self.low - 0.5, self.high + 0.5) if integer else (self.low, self.high)
        self._lo, self._hi = (math.log(lo), math.log(hi)) if log else (lo, hi)

    def _value(self, x: float) -> int | float:
        """A point of the (log-)interval -> the axis value: clipped, ints rounded."""
        v = math.exp(x) if self.log else x
        if self.integer:
            return min(max(math.floor(v + 0.5), self.low), self.high)
        return min(max(float(v), self.low), self.high)

    def grid_points(self) -> list[int | float]:
        """``num`` points from low to high (geometric for log ranges); ints rounded
        with duplicates dropped (in order).

        Raises:
            ConfigError: the range has no ``num``.
        """
        if self.num is None:
            raise ConfigError(
                f"{self.origin}: {self.key}: a range needs num = K points for grid search"
            )
        pts = (np.geomspace if self.log else np.linspace)(self.low, self.high, self.num)
        if not self.integer:
            return [float(p) for p in pts]
        return list(dict.fromkeys(int(round(p)) for p in pts))

    def sample(self, rng: np.random.Generator) -> int | float:
        """Uniform (log-uniform for log ranges); each int of an int range equally likely
        (less so on log ranges, where small ints get more)."""
        return self._value(self._lo + rng.random() * (self._hi - self._lo))

    def encode(self, value: float) -> float:
        """The value's position in [0, 1] (the middle of its cell for ints)."""
        v = min(max(float(value), self.low), self.high)
        x = math.log(v) if self.log else v
        return min(max((x - self._lo) / (self._hi - self._lo), 0.0), 1.0)

    def decode(self, u: float) -> int | float:
        """The value at ``u`` (clipped to [0, 1]): a float, or an int for int ranges."""
        u = min(max(float(u), 0.0), 1.0)
        return self._value(self._lo + u * (self._hi - self._lo))

    def extremes(self) -> list[int | float]:
        """The values a trial may take that ``train`` must accept: the ends."""
        return [self.low, self.high]

    def describe(self) -> str:
        opts = "".join(f" {o}" for o, on in (("log", self.log), ("int", self.integer)) if on) + (
            f" num={self.num}" if self.num else ""
        )
        return f"{self.key} in [{fmt(self.low)}, {fmt(self.high)}]{opts}"


Axis = Categorical | Range


def fits(value: Any, typ: type) -> bool:
    """Whether ``value`` is a valid TOML value for a config field of type ``typ``."""
    if typ is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if typ is float:
        return _number(value)
    return isinstance(value, typ)


def axis(key: str, spec: Any, typ: type, origin: str) -> Axis:
    """The axis ``spec`` describes for config key ``key`` (of type ``typ``): a list or
    ``{values = [...]}`` is a :class:`Categorical`, ``{low, high, ...}`` a :class:`Range`.

    Raises:
        ConfigError: a bad spec, or values that do not fit ``typ`` (one line naming
            ``origin`` and the key).
    """
    if isinstance(spec, list | tuple):
        spec = {"values": list(spec)}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{origin}: {key}: an axis is {{ values = [...] }} or {{ low = a, high = b }}, "
            f"got {spec!r} (a constant goes in [fixed])"
        )
    if "values" in spec:
        extra = sorted(set(spec) - {"values"})
        if extra:
            raise ConfigError(
                f"{origin}: {key}: unknown option {extra[0]!r} next to values "
                "(a categorical takes only values)"
            )
        axis = Categorical(key, spec["values"], origin=origin)
        for v in axis.values:
            if not fits(v, typ):
                raise ConfigError(
                    f"{origin}: {key}: values must be {typ.__name__} for this key, got {v!r}"
                )
        return axis
    extra = sorted(set(spec) - set(_RANGE_OPTIONS))
    if extra:
        raise ConfigError(
            f"{origin}: {key}: unknown option {extra[0]!r}; a range takes "
            f"{', '.join(_RANGE_OPTIONS)}, a categorical takes values"
        )
    missing = [o for o in ("low", "high") if o not in spec]
    if missing:
        raise ConfigError(
            f"{origin}: {key}: a range needs low and high (missing {missing[0]}), "
            "a categorical needs values"
        )
    if typ not in (int, float):
        raise ConfigError(
            f"{origin}: {key}: a range needs a numeric key, this one is {typ.__name__} "
            "(list the choices as values = [...])"
        )
    integer = spec.get("int", False)
    if typ is int and integer is not True:
        raise ConfigError(f"{origin}: {key}: an int key; its range needs int = true")
    return Range(
        key,
        spec["low"],
        spec["high"],
        log=spec.get("log", False),
        integer=integer,
        num=spec.get("num"),
        origin=origin,
    )
