"""The `logagg` command and `python -m logagg`: the command-line interface."""

import sys


def main() -> None:
    """Load the command line and run it; a Ctrl-C while it is still loading ends the
    process quietly with 130, as one later does."""
    try:
        from logagg.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
