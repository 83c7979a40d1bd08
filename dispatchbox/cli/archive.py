"""`dispatchbox archive ...`: move finished rows out of the outbox, now or on a pg_cron schedule."""

from __future__ import annotations

import typer

app = typer.Typer(help="Archival and retention (pg_cron).", no_args_is_help=True)
