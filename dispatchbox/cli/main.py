"""The `dispatchbox` command: one Typer app, one module per command group."""

from __future__ import annotations

import os
import sys
from typing import Any

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
    from dispatchbox.cli import (
        archive,
        breakers,
        dead_events,
        demo,
        redrive,  # noqa: F401 - registers its verbs on dead-events
        worker,
    )

    app.add_typer(dead_events.app, name="dead-events")
    app.add_typer(breakers.app, name="breakers")
    app.add_typer(archive.app, name="archive")
    app.command("worker")(worker.worker_command)
    app.command("demo")(demo.demo_command)
    from dispatchbox.cli import serve

    app.command("serve")(serve.serve_command)
    from dispatchbox.cli import monitor

    app.command("monitor")(monitor.monitor_command)


_register_optional()


def _click_error(exc: BaseException) -> bool:
    # Typer ships its own copy of Click in recent versions and uses the real one in older ones:
    # recognise a Click exception by its shape rather than by one of the two classes.
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message")


def _report_click_error(exc: Any) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
        print(exc.ctx.get_help())
        return 0
    where = ""
    if getattr(exc, "ctx", None) is not None and type(exc).__name__ != "ClickException":
        where = f"{exc.ctx.command_path}: "
    # One line, not Click's usage box: scripts and people at 3 a.m. read the first line.
    message = " ".join(str(exc.format_message()).split())
    print(f"dispatchbox: error: {where}{message}", file=sys.stderr)
    return int(exc.exit_code)


def run() -> None:
    """Console-script entry: our errors and database errors become one line and an exit code."""
    try:
        code = app(standalone_mode=False)
    except DispatchboxError as exc:
        print(f"dispatchbox: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except psycopg.errors.UndefinedTable as exc:
        print(
            "dispatchbox: error: the dispatchbox schema is missing or incomplete in this "
            f"database ({' '.join(str(exc).split())}); run `dispatchbox db migrate`",
            file=sys.stderr,
        )
        sys.exit(1)
    except psycopg.Error as exc:
        message = db.redact(" ".join(str(exc).split()))
        print(f"dispatchbox: error: database error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("dispatchbox: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        print(f"dispatchbox: error: cannot write output: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if _click_error(exc):
            sys.exit(_report_click_error(exc))
        if type(exc).__name__ == "Abort":
            print("dispatchbox: aborted", file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)
