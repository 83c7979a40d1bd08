"""`dispatchbox dead-events ...`: see, count, analyse, retry, export and purge dead events."""

from __future__ import annotations

import typer

app = typer.Typer(help="Dead events: list, stats, show, retry, export, purge.", no_args_is_help=True)
