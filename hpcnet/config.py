"""Run configuration: declared options <- TOML file <- command-line flags.

A config has one section per concern (``[run]``, ``[data]``, ``[model]``, ``[optim]``,
``[algo]``, and the sections algorithms add: Downpour's ``[ps]``, Sandblaster's
``[lbfgs]``, ...). The options are declared by the code that reads them
(:mod:`hpcnet.options`); this module declares the ones every run has and assembles
the rest: the section objects, ``--help`` (:func:`add_train_flags`), loading
(:func:`load_config`) and checking (:func:`validate`). Unknown keys, wrong types and
out-of-range values are :class:`hpcnet.errors.ConfigError` naming the file or flag.
Validation uses no MPI, so every rank rejects a bad config the same way before any
communication.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Any

import tomli_w

from hpcnet.errors import ConfigError, did_you_mean
from hpcnet.options import Option, declare, flag_for, option, options, rules, section, sections

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


section("run", "how long and where: epochs, batch, seed, output, compute, checkpoints")
section("data", "which dataset: a path to an hpcnet .h5 file or a known name")
section("model", "which model")
section("optim", "SGD settings and the large-minibatch rules of Goyal et al. 2017")
section("algo", "the training algorithm and the roles its ranks take")

_ge0 = (lambda v: v >= 0), "must be >= 0"
declare(
    Option("algo.name", "sync", "training algorithm (python -m hpcnet info --algo NAME shows "
           "its layout)", flag="--algo"),
    Option("algo.shards", 1, "parameter shard ranks (algorithms with shards)",
           check=_ge0[0], must=_ge0[1]),
    Option("algo.replicas", 0, "replica ranks (algorithms with shards; 0: all other ranks)",
           check=_ge0[0], must="must be >= 0 (0: all non-shard ranks)"),
    Option("algo.partitions", 1, "model parallelism: ranks per replica (M; Dean et al. 2012, "
           "sec. 3)", check=lambda v: v >= 1, must="must be >= 1"),
    owner="hpcnet.config (the layout)",
)  # fmt: skip
declare(
    Option("model.name", "auto", "model: a built-in (mlp, wide_mlp, lenet, 2conv, digits_cnn, "
           "linear, alexnet, towers), FILE.toml, FILE.py:FUNCTION, module:FUNCTION, or auto "
           "(the dataset's default)", flag="--model"),
    Option("model.layers", (), "the model's layers written in the config file, as a "
           "model file's layers array (then --model only names it)"),
    owner="hpcnet.config",
)  # fmt: skip
declare(
    Option("data.name", "digits", "an hpcnet .h5 file, or digits | fashion-mnist",
           flag="--data", check=bool, must="must name a file or a dataset"),
    Option("data.augment", False, "random crop and horizontal flip of training images"),
    Option("data.crop_pad", 2, "augment: zero padding (pixels) for the random crop",
           check=_ge0[0], must="must be >= 0 pixels"),
    Option("data.val_fraction", 0.0, "hold out this stratified share of the train split for "
           "validation (0: none); never trained on, reported as val_loss / val_accuracy",
           check=lambda v: 0 <= v < 1, must="must lie in [0, 1)"),
    Option("data.val_seed", 0, "the seed of the validation split's draw"),
    Option("data.verify", "auto", "check the data file's SHA-256 when a run opens it "
           "(auto: files under 256 MiB)", choices=("auto", "always", "never"),
           flag="--verify-data"),
    Option("run.eval_every", 0, "steps between validation evaluations in the progress "
           "records (sync; 0: at the end only)", check=_ge0[0], must="must be >= 0"),
    owner="hpcnet.config",
)  # fmt: skip
declare(
    Option("run.epochs", 30, "passes over the training data",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("run.max_steps", 0, "stop after this many steps (0: no limit)",
           check=_ge0[0], must="must be >= 0 (0: no limit)"),
    Option("run.batch_size", 32, "samples per replica per step",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("run.seed", 0, "seed for initialisation, shuffling and dropout",
           check=_ge0[0], must=_ge0[1]),
    Option("run.out", "", "output directory (default runs/<timestamp>)"),
    Option("run.backend", "auto", "compute backend", choices=("auto", "cpu", "cuda")),
    Option("run.threads", 0, "compute threads per rank (0: cores / local ranks)",
           check=_ge0[0], must="must be >= 0 (0: automatic)"),
    Option("run.log_every", 0, "steps between progress lines (0: about 20 per run, at most "
           "one per step)", check=_ge0[0], must="must be >= 0 (0: automatic)"),
    Option("run.verbose", False, "print the whole resolved config at start (it is always in "
           "OUT/config.toml)"),
    Option("run.checkpoint_every", 0, "steps between checkpoints in OUT/checkpoint.h5 (0: "
           "only the final one)", check=_ge0[0], must="must be >= 0 steps (0: final only)"),
    Option("run.checkpoint_every_s", 0.0, "seconds between checkpoints, as agreed at a step "
           "boundary (0: off)", check=_ge0[0], must="must be >= 0 seconds (0: off)"),
    Option("run.keep_checkpoints", 2, "checkpoints kept in OUT (>= 1)",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("run.resume", "", "continue the run in this OUT from its newest checkpoint"),
    Option("run.overwrite", False, "replace the run already in --out (without it, an OUT "
           "holding a run is refused: --resume continues it)"),
    Option("run.resume_fallback", False, "with --resume: use the newest intact checkpoint if "
           "the newest is damaged"),
    Option("run.timeout", 300.0, "watchdog: seconds a rank may wait for another before the "
           "job ends with a stall report naming it (exit 124; 3x for the first step)",
           check=lambda v: v > 0, must="must be > 0 seconds"),
    Option("run.tensorboard", True, "write TensorBoard event files in OUT/tb (needs the "
           "tensorboard extra)"),
    owner="hpcnet.config",
)  # fmt: skip
declare(
    Option("optim.lr", 0.05, "base learning rate", check=lambda v: v > 0, must="must be > 0"),
    Option("optim.momentum", 0.9, "SGD momentum in [0, 1)",
           check=lambda v: 0 <= v < 1, must="must be in [0, 1)"),
    Option("optim.weight_decay", 0.0, "L2 weight decay", check=_ge0[0], must=_ge0[1]),
    Option("optim.lr_scaling", "none", "linear: lr x total batch / --reference-batch "
           "(Goyal et al. 2017)", choices=("none", "linear")),
    Option("optim.reference_batch", 256, "total batch at which lr is the base lr",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("optim.warmup_epochs", 0.2, "epochs of gradual linear lr warmup",
           check=_ge0[0], must=_ge0[1]),
    Option("optim.lr_schedule", "cosine", "after warmup: constant, or cosine decay to 0 "
           "(Loshchilov & Hutter 2017)", choices=("constant", "cosine")),
    owner="hpcnet.config",
)  # fmt: skip


_CLASSES: dict[tuple, type] = {}


def section_classes() -> dict[str, type]:
    """``{section: frozen dataclass}`` of the options declared now (the classes are made
    anew when more options are declared, e.g. by an algorithm registered later)."""
    out = {}
    for name in sections():
        opts = tuple(o for o in options() if o.section == name)
        if not opts:
            continue
        cls = _CLASSES.get(opts)
        if cls is None:
            cls = dataclasses.make_dataclass(
                f"{name.capitalize()}Config",
                [(o.name, o.type, field(default=o.default)) for o in opts],
                frozen=True,
            )
            cls.__doc__ = sections()[name]
            _CLASSES[opts] = cls
        out[name] = cls
    return out


class Config:
    """A resolved run configuration: one frozen section object per TOML section, whose
    attributes are that section's options (``cfg.run.epochs``, ``cfg.algo.name``).

    ``Config()`` holds every declared option's default; ``Config(run={"epochs": 3})``
    or ``Config(run=section_object)`` sets some. Immutable (:func:`replace` makes a
    changed copy); equal when every value is.

    Raises:
        TypeError: a section that no declared option belongs to.
    """

    def __init__(self, **given: Any):
        classes = section_classes()
        unknown = sorted(set(given) - set(classes))
        if unknown:
            raise TypeError(f"Config: no options are declared in section(s) {unknown}")
        for name, cls in classes.items():
            value = given.get(name)
            if value is None:
                value = cls()
            elif isinstance(value, dict):
                value = cls(**value)
            elif not isinstance(value, cls):  # a section object of an older class
                value = cls(**dataclasses.asdict(value))
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_sections", tuple(classes))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_toml())

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{s}={getattr(self, s)!r}' for s in self._sections)})"

    def __reduce__(self):
        return (_from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {option: value}}``, an array option as a list (as TOML reads it)."""
        return {
            s: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, s)).items()
            }
            for s in self._sections
        }

    def to_toml(self) -> str:
        """The resolved config as TOML text (loadable with ``--config``)."""
        return tomli_w.dumps(self.to_dict())


def _from_dict(d: dict[str, dict[str, Any]]) -> Config:
    return Config(**d)


def _help(o: Option) -> str:
    choices = f" ({' | '.join(map(str, o.choices))})" if o.choices else ""
    default = "on" if o.default is True else "off" if o.default is False else repr(o.default)
    return f"{o.help}{choices} [default {default}; [{o.section}] {o.name}]"


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config`` and every declared option's flag to ``parser``, one argument
    group per section (default: unset, so a config file's value is not overridden)."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML config file; flags override it")
    groups = {name: parser.add_argument_group(f"[{name}]", doc) for name, doc in sections().items()}
    for o in options():
        o.add_flag(groups[o.section], o.key, _help(o))


def read_toml(path: str | os.PathLike, kind: str = "config file") -> dict[str, Any]:
    """The TOML document in ``path`` (a ``kind``: named in errors).

    Raises:
        ConfigError: missing, unreadable or not TOML; one line naming ``path``.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} not found") from None
    except tomllib.TOMLDecodeError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise ConfigError(f"{path}: not valid TOML: {first}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {kind}: {e.strerror}") from None


_HINT = "options are declared by the modules that read them: import hpcnet.algos for all"


def _typed(key: str, value: Any, where: str) -> Any:
    """``value`` as option ``key``'s type (an int where a float is wanted becomes one).

    Raises:
        ConfigError: the wrong type; ``where`` starts the message (a file, a flag).
    """
    try:
        value = option(key).typed(value)
    except TypeError as e:
        section, name = key.split(".", 1)
        raise ConfigError(f"{where}: [{section}] {name} {e}") from None
    return value


def _load_toml(path: str) -> dict[str, dict[str, Any]]:
    doc = read_toml(path)
    known = section_classes()
    out: dict[str, dict[str, Any]] = {}
    for name, table in doc.items():
        if name not in known or not isinstance(table, dict):
            raise ConfigError(
                f"{path}: unknown section [{name}]{did_you_mean(name, known)}; expected one "
                f"of {', '.join('[' + s + ']' for s in known)} ({_HINT})"
            )
        for key, value in table.items():
            try:
                option(f"{name}.{key}")
            except KeyError:
                keys = [o.name for o in options() if o.section == name]
                raise ConfigError(
                    f"{path}: unknown key {key!r} in [{name}]{did_you_mean(key, keys)}"
                ) from None
            out.setdefault(name, {})[key] = _typed(f"{name}.{key}", value, path)
    return out


def resume_base(config_file: str | None, resume: str | None) -> str | None:
    """The config file a run starts from: ``config_file``; with ``--resume OUT`` and no
    ``--config``, OUT's own ``config.toml`` (so ``train --resume OUT`` alone continues
    with the settings OUT was written with; flags still override).

    Raises:
        ConfigError: ``--resume`` names no directory.
    """
    if not resume or config_file:
        return config_file
    out = Path(resume)
    if not out.is_dir():
        raise ConfigError(f"--resume {resume}: no such directory")
    saved = out / "config.toml"
    return str(saved) if saved.is_file() else None


def load_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Builds and validates a Config from defaults, a TOML file, then flag overrides.

    The options known are those declared (:mod:`hpcnet.options`) by the modules
    imported so far; ``import hpcnet.algos`` declares every built-in one.

    Args:
        config_file: path of a TOML file, or None.
        overrides: ``{"section.field": value}`` (None values are ignored), as
            :func:`add_train_flags` leaves them in the argparse namespace.
    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    values = _load_toml(config_file) if config_file else {}
    known = section_classes()
    for key, value in (overrides or {}).items():
        if value is None or "." not in key:
            continue
        name, field_name = key.split(".", 1)
        if name not in known:
            continue
        try:
            option(key)
        except KeyError:
            raise ConfigError(f"{key}: no such option in [{name}] ({_HINT})") from None
        values.setdefault(name, {})[field_name] = _typed(key, value, flag_for(key))
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks every option's value (its ``choices`` and ``check``), then the declared
    whole-config rules (:func:`hpcnet.options.rule`).

    Raises:
        ConfigError: the first bad value, naming its flag, what was found and what is
            wanted.
    """
    for o in options():
        value = getattr(getattr(cfg, o.section), o.name)
        what = o.problem(value)
        if what:
            raise ConfigError(f"{o.flag} {value!r}: {what}")
    for check in rules():
        check(cfg)


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some fields changed, e.g. ``replace(cfg, run={"out": "x"})``."""
    changed = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    return Config(**{s: changed.get(s, getattr(cfg, s)) for s in cfg.to_dict()})


def save_config(cfg: Config, path: Path) -> None:
    """Writes the resolved config as TOML."""
    Path(path).write_text(cfg.to_toml())
