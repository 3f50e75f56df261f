"""The command line's argument parser: a usage error is one line, exit status 2."""

from __future__ import annotations

import argparse

from hpcnet.errors import ConfigError, did_you_mean


class _Subcommands(argparse._SubParsersAction):
    """Subcommands whose ``--help`` starts with what they do: the one-line ``help`` of
    the command list, where no longer ``description`` is given."""

    def add_parser(self, name, **kwargs):
        short = kwargs.get("help")
        if short and not kwargs.get("description"):
            kwargs["description"] = short[0].upper() + short[1:] + "."
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is an HpcnetError (one line, exit 2, every rank), and
    an unknown flag is answered with the closest known one.

    Raises:
        ConfigError: from :meth:`error`, with the program name and argparse's message.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [a.split("=", 1)[0] for a in extras if a.startswith("--")]
            known = self._flags_of_command(ns) - set(flags)
            hint = did_you_mean(flags[0], known) if flags else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns

    def _flags_of_command(self, ns: argparse.Namespace) -> set[str]:
        """The ``--`` flags of the (sub)command ``ns`` was parsed for."""
        parser, flags = self, set()
        while parser is not None:  # down to the innermost subcommand: its flags
            nxt = None
            flags = set()
            for action in parser._actions:
                flags.update(o for o in action.option_strings if o.startswith("--"))
                if isinstance(action, argparse._SubParsersAction):
                    nxt = action.choices.get(getattr(ns, action.dest, None) or "")
            parser = nxt
        return flags - {"--help", "--version"}
