"""`python -m logagg` runs the command-line interface."""

from logagg.cli import main

main()
