"""``python -m hpcnet`` -> :func:`hpcnet.cli.main`."""

from hpcnet.cli import main

if __name__ == "__main__":
    main()
