"""The command line's argument parser: a usage error is one line, exit status 2."""

from __future__ import annotations

import argparse

from hpcnet.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is an HpcnetError (one line, exit 2, every rank).

    Raises:
        ConfigError: from :meth:`error`, with the program name and argparse's message.
    """

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")
