"""Optional dependencies (the extras of ``pyproject.toml``): a clear error naming what
to install when one is missing."""

from __future__ import annotations

from hpcnet.errors import MissingExtra


def require_matplotlib() -> None:
    """Raises MissingExtra (one line, exit status 2) when matplotlib is not installed.

    Raises:
        MissingExtra: matplotlib cannot be imported; says to install the ``plot`` extra.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "plot needs matplotlib, which is not installed: pip install -e '.[plot]' "
            "(or pip install matplotlib)"
        ) from None
