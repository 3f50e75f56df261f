"""Prints README.md's install-and-run command (1) or install-and-test command (2).

The two commands are the first two ``sh`` code blocks of README.md. CI runs what this
prints (``.ci/run``), and ``tests/e2e/test_readme.py`` runs command 1's job, so README,
CI and the tests cannot drift apart. Usage: ``python3 scripts/readme_command.py 1|2``.
Standard library only: it runs on the system Python before any environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[str]:
    """The first two ``sh`` blocks' contents (each one line), in README order.

    Raises:
        ValueError: fewer than two ``sh`` blocks, or one that is not a single line.
    """
    blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)[:2]
    if len(blocks) < 2 or any("\n" in b for b in blocks):
        raise ValueError("README.md must open with two one-line ```sh blocks")
    return blocks


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("1", "2"):
        print("usage: python3 scripts/readme_command.py 1|2", file=sys.stderr)
        return 2
    try:
        print(readme_commands(README.read_text())[int(argv[0]) - 1])
    except ValueError as e:
        print(f"{README}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
