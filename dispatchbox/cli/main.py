"""The `dispatchbox` command: one Typer app, one module per command group."""

from __future__ import annotations

import sys

import psycopg
import typer

from dispatchbox import db
from dispatchbox.cli import db as db_cli
from dispatchbox.cli.common import CliState
from dispatchbox.cli.publish import publish_command
from dispatchbox.errors import DispatchboxError

app = typer.Typer(
    name="dispatchbox",
    help="Transactional-outbox dispatcher for PostgreSQL with a complete dead-letter lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    dsn: str | None = typer.Option(
        None,
        "--dsn",
        help="PostgreSQL DSN; default $DISPATCHBOX_DSN, then $DATABASE_URL.",
        show_default=False,
    ),
) -> None:
    ctx.obj = CliState(dsn_flag=dsn)


app.add_typer(db_cli.app, name="db")
app.command("publish")(publish_command)


def _register_optional() -> None:
    # Command groups added by later modules register here, so the core stays importable alone.
    from dispatchbox.cli import archive, dead_events, demo

    app.add_typer(dead_events.app, name="dead-events")
    app.add_typer(archive.app, name="archive")
    app.command("demo")(demo.demo_command)


_register_optional()


def run() -> None:
    """Console-script entry: our errors and database errors become one line and an exit code."""
    try:
        app()
    except DispatchboxError as exc:
        print(f"dispatchbox: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except psycopg.Error as exc:
        message = db.redact(" ".join(str(exc).split()))
        print(f"dispatchbox: error: database error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("dispatchbox: interrupted", file=sys.stderr)
        sys.exit(130)
