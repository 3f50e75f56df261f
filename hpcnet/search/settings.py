"""How a search runs (not what it searches): its options, declared once, and the
:class:`SearchSettings` object that carries them.

The search has its own option registry (:data:`SEARCH`, section ``[search]``), so its
options never mix with ``train``'s: the settings every search has are declared here,
and each strategy declares its own when it registers
(:func:`hpcnet.search.strategy.register_strategy`: random search's ``--trials``,
differential evolution's ``--population``, ...). The ``search`` subcommand's flags,
the ``[search]`` table of a space file and :func:`hpcnet.search.run_search`'s keywords are
all checked against it, and every default lives in the declaration alone. A value
comes from, in this order: the flag (or keyword), the space file's ``[search]``
table, the declared default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hpcnet.errors import ConfigError
from hpcnet.options import Option, Registry

SEARCH = Registry("search")
SEARCH.section("search", "how a search runs: strategy, groups, metric, stopping")
EARLY_STOP = ("none", "median", "asha")
SEARCH.declare(
    Option("search.strategy", "grid", "the search strategy (a registered name: grid, random, "
           "de, or one you register)"),
    Option("search.group_size", 1, "ranks per trial", check=lambda v: v >= 1,
           must="must be >= 1"),
    Option("search.out", "runs/search", "the search directory"),
    Option("search.metric", "auto", "summary key to optimise (auto: val_accuracy when the "
           "trials hold out a validation split, --val-fraction; else test_accuracy)"),
    Option("search.direction", "max", "the metric's better side", choices=("max", "min")),
    Option("search.early_stop", "none", "stop unpromising trials early (median: Golovin et "
           "al. 2017; asha: Li et al. 2020)", choices=EARLY_STOP),
    Option("search.trial_timeout", 0.0, "seconds per trial (0: none)",
           check=lambda v: v >= 0, must="must be >= 0 seconds (0: none)"),
    Option("search.seed", 0, "seed of the strategies that draw trials",
           check=lambda v: v >= 0, must="must be >= 0"),
    owner="hpcnet.search",
)  # fmt: skip


def default(name: str) -> Any:
    """The declared default of search option ``name`` (e.g. ``default("strategy")``)."""
    return SEARCH.option(f"search.{name}").default


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs; build it with :func:`resolve` (which checks every value).

    Attributes:
        strategy: the registered strategy's name (or the name of the object passed).
        group_size: ranks per trial; must divide the search's ranks.
        out: the search directory.
        metric: the summary key to optimise; ``direction``: ``max`` or ``min``.
        early_stop: ``none``, ``median`` or ``asha``.
        trial_timeout: seconds a trial may run (0: no limit).
        seed: the seed of strategies that draw trials.
        options: the strategy's own options, ``{name: value}`` (e.g. ``{"trials": 10}``).
        config_file: a train config every trial starts from (None: none).
        resume: continue the search in ``out``.
        verbose: print a line per finished trial and the final table (rank 0).
    """

    strategy: str = field(default_factory=lambda: default("strategy"))
    group_size: int = field(default_factory=lambda: default("group_size"))
    out: str = field(default_factory=lambda: default("out"))
    metric: str = field(default_factory=lambda: default("metric"))
    direction: str = field(default_factory=lambda: default("direction"))
    early_stop: str = field(default_factory=lambda: default("early_stop"))
    trial_timeout: float = field(default_factory=lambda: default("trial_timeout"))
    seed: int = field(default_factory=lambda: default("seed"))
    options: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    resume: bool = False
    verbose: bool = True


COMMON = tuple(f.name for f in fields(SearchSettings) if f.name not in ("options",))


STRATEGIES: dict[str, Any] = {}  # name -> StrategyEntry (hpcnet.search.strategy fills it)


def check_value(name: str, value: Any, origin: str | None = None) -> Any:
    """``value`` of search option ``name``, type-checked (an int where a float is wanted
    becomes one) and checked against its declaration (a strategy name against the
    registered strategies).

    Args:
        origin: the space file whose ``[search]`` table holds it; None: a flag or a
            keyword of :func:`hpcnet.search.run_search`.
    Raises:
        ConfigError: an unknown option, the wrong type or a bad value, in one line that
            names the file and table, or the flag.
    """

    def bad(what: str) -> ConfigError:
        if origin is None:
            return ConfigError(f"{SEARCH.flag_for('search.' + name)} {value!r}: {what}")
        return ConfigError(f"{origin}: [search] {name} = {value!r}: {what}")

    try:
        o = SEARCH.option(f"search.{name}")
    except KeyError:
        known = ", ".join(o.name for o in SEARCH.options())
        where = f"{origin}: [search]" if origin else "search"
        raise ConfigError(f"{where} unknown key {name!r}; expected one of {known}") from None
    try:
        value = o.typed(value)
    except TypeError as e:
        where = f"{origin}: [search] {name}" if origin else o.flag
        raise ConfigError(f"{where} {e}") from None
    if name == "strategy" and value not in STRATEGIES:
        raise bad(f"unknown strategy; choose one of {', '.join(STRATEGIES)}")
    what = o.problem(value)
    if what:
        raise bad(what)
    return value


def check_table(table: dict[str, Any], origin: str) -> None:
    """Checks a space file's ``[search]`` table: every key a declared search option (of
    any strategy: one file may serve several), every value of its type and range.

    Raises:
        ConfigError: the first bad key or value, naming ``origin`` and the key.
    """
    for name, value in table.items():
        check_value(name, value, origin)


def resolve(
    given: dict[str, Any],
    space_search: dict[str, Any] | None = None,
    *,
    strategy_options: tuple[Option, ...] = (),
    origin: str = "space",
) -> SearchSettings:
    """The settings from ``given`` (flags or keywords; None: not given), then a space
    file's ``[search]`` table, then the declared defaults, every value checked.

    Args:
        given: ``{name: value}``: :class:`SearchSettings` fields and strategy options.
        space_search: the space file's ``[search]`` table.
        strategy_options: the chosen strategy's own options (their defaults fill
            ``options``); others given for another strategy are an error.
        origin: the space file, named in errors about its table.
    Raises:
        ConfigError: an unknown name, a wrong type or a bad value (one line).
    """
    mine = {o.name for o in strategy_options}
    values: dict[str, Any] = {}
    for source, table in ((origin, space_search or {}), (None, given)):
        for name, value in table.items():
            if value is None:
                continue
            if name in ("config_file", "resume", "verbose"):
                values[name] = value
                continue
            values[name] = check_value(name, value, source)
    strategy = values.get("strategy", default("strategy"))
    for name, value in given.items():  # a space file may hold several strategies' options
        if value is None or name in COMMON or name in mine:
            continue
        flag = SEARCH.flag_for(f"search.{name}")
        raise ConfigError(f"{flag} is not an option of strategy {strategy!r}")
    options = {o.name: values.get(o.name, o.default) for o in strategy_options}
    return SearchSettings(**{k: v for k, v in values.items() if k in COMMON}, options=options)


def metric_for(settings: SearchSettings, fixed: dict[str, Any], train_fn=None) -> str:
    """The metric a search optimises: ``settings.metric``, where ``auto`` means
    ``val_accuracy`` when its trials hold out a validation split (``data.val_fraction``
    in ``fixed`` or the config file) and ``test_accuracy`` otherwise: choosing
    hyper-parameters on the test split is selecting on the test set.

    Raises:
        ConfigError: a bad config file or fixed key.
    """
    if settings.metric != "auto":
        return settings.metric
    if train_fn is not None:
        return "test_accuracy"
    from hpcnet.config import load_config

    cfg = load_config(settings.config_file, dict(fixed))
    return "val_accuracy" if cfg.data.val_fraction > 0 else "test_accuracy"
