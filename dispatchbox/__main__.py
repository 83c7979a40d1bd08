"""`python -m dispatchbox` runs the CLI."""

from dispatchbox.cli.main import run

run()
