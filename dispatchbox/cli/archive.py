"""`dispatchbox archive ...`: move finished rows out of the outbox, now or on a pg_cron schedule.

``run`` archives now (and purges with ``--purge-older-than-days``); ``purge`` only purges;
``schedule`` / ``unschedule`` / ``status`` manage the pg_cron jobs that do the same every night.
The outbox DSN is the usual ``--dsn``; pg_cron lives in the database named by
``cron.database_name`` on the same server, reached with the outbox DSN's host, port and user
unless ``--cron-dsn`` (``DISPATCHBOX_CRON_DSN``) says otherwise.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer

from dispatchbox import db
from dispatchbox.cli.common import connection, info, state, usage_error
from dispatchbox.maintenance import cron
from dispatchbox.maintenance.archiver import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEAD_RETENTION_DAYS,
    DEFAULT_PAUSE_SECONDS,
    DEFAULT_RETENTION_DAYS,
    Archiver,
    ArchiverConfig,
    purge_archive,
    require_schema,
)

app = typer.Typer(help="Archival and retention (pg_cron).", no_args_is_help=True)

# Integers arrive as text and are checked here, so that a bad value ends in one line and exit 2
# (click's own message spans several lines).
_RETENTION = typer.Option(
    str(DEFAULT_RETENTION_DAYS),
    "--retention-days",
    metavar="DAYS",
    help="Archive done events whose done_at is more than DAYS days ago.",
)
_DEAD_RETENTION = typer.Option(
    str(DEFAULT_DEAD_RETENTION_DAYS),
    "--dead-retention-days",
    metavar="DAYS",
    help="Archive dead events (with their error history) whose dead_at is more than DAYS ago.",
)
_KEEP_DEAD = typer.Option(
    False, "--keep-dead", help="Do not archive dead events at all (ignore --dead-retention-days)."
)
_PURGE = typer.Option(
    None,
    "--purge-older-than-days",
    metavar="DAYS",
    help="Also delete archived events archived more than DAYS days ago. Default: never.",
    show_default=False,
)
_BATCH = typer.Option(
    str(DEFAULT_BATCH_SIZE), "--batch-size", metavar="N", help="Rows per statement/transaction."
)
_PAUSE = typer.Option(
    str(DEFAULT_PAUSE_SECONDS),
    "--pause",
    metavar="SECONDS",
    help="Sleep between batches, leaving room to the workers; 0: back to back.",
)
_CRON_DSN = typer.Option(
    None,
    "--cron-dsn",
    envvar="DISPATCHBOX_CRON_DSN",
    help="DSN of the pg_cron database (cron.database_name). Default: the outbox DSN with that "
    "database.",
    show_default=False,
)
_FORMAT = typer.Option("table", "--format", metavar="table|json", help="Output format.")


def _int(flag: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        usage_error(f"{flag} must be a whole number, got {text!r}")
    if value < minimum:
        usage_error(f"{flag} must be {minimum} or more, got {value}")
    return value


def _pause(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        usage_error(f"--pause must be a number of seconds, got {text!r}")
    if not 0 <= value <= 3600:
        usage_error(f"--pause must be between 0 and 3600 seconds, got {text}")
    return value


def _config(
    retention_days: str,
    dead_retention_days: str,
    keep_dead: bool,
    purge_older_than_days: str | None,
    batch_size: str,
    pause: str,
) -> ArchiverConfig:
    return ArchiverConfig(
        retention_days=_int("--retention-days", retention_days, minimum=0),
        dead_retention_days=None
        if keep_dead
        else _int("--dead-retention-days", dead_retention_days, minimum=0),
        purge_after_days=None
        if purge_older_than_days is None
        else _int("--purge-older-than-days", purge_older_than_days, minimum=0),
        batch_size=_int("--batch-size", batch_size, minimum=1),
        pause_seconds=_pause(pause),
    )


def _format(value: str) -> str:
    if value not in ("table", "json"):
        usage_error(f"--format must be table or json, got {value!r}")
    return value


@app.command()
def run(
    ctx: typer.Context,
    retention_days: str = _RETENTION,
    dead_retention_days: str = _DEAD_RETENTION,
    keep_dead: bool = _KEEP_DEAD,
    purge_older_than_days: str | None = _PURGE,
    batch_size: str = _BATCH,
    pause: str = _PAUSE,
    output: str = _FORMAT,
) -> None:
    """Archive old done and dead events now, in committed batches, and print the counts."""
    config = _config(
        retention_days, dead_retention_days, keep_dead, purge_older_than_days, batch_size, pause
    )
    fmt = _format(output)
    # Autocommit: every batch commits on its own, so locks and snapshots stay short.
    with connection(ctx, autocommit=True) as conn:
        require_schema(conn)
        result = Archiver(config).run_once(conn)
    if fmt == "json":
        print(
            json.dumps(
                {
                    "done_archived": result.archived.done_moved,
                    "dead_archived": result.archived.dead_moved,
                    "purged": result.purged,
                    "seconds": round(result.seconds, 3),
                }
            )
        )
        return
    print(
        f"archived {result.archived.done_moved} done events "
        f"(done more than {config.retention_days} days ago)"
    )
    if config.dead_retention_days is None:
        print("dead events kept in the outbox (--keep-dead)")
    else:
        print(
            f"archived {result.archived.dead_moved} dead events "
            f"(dead more than {config.dead_retention_days} days ago)"
        )
    if result.purged is not None:
        print(
            f"purged {result.purged} archived events "
            f"(archived more than {config.purge_after_days} days ago)"
        )


@app.command()
def purge(
    ctx: typer.Context,
    older_than_days: str = typer.Option(
        ...,
        "--older-than-days",
        metavar="DAYS",
        help="Delete archived events (and their archived errors) archived more than DAYS ago.",
    ),
    batch_size: str = _BATCH,
    pause: str = _PAUSE,
) -> None:
    """Delete old rows from the archive for good, in committed batches."""
    days = _int("--older-than-days", older_than_days, minimum=0)
    size = _int("--batch-size", batch_size, minimum=1)
    seconds = _pause(pause)
    with connection(ctx, autocommit=True) as conn:
        require_schema(conn)
        n = purge_archive(conn, older_than_days=days, batch_size=size, pause_seconds=seconds)
    print(f"purged {n} archived events (archived more than {days} days ago)")


@app.command()
def schedule(
    ctx: typer.Context,
    cron_expr: str = typer.Option(
        cron.DEFAULT_SCHEDULE,
        "--cron",
        metavar="EXPR",
        help="When to run, in cron syntax; pg_cron reads it in GMT unless cron.timezone is set.",
    ),
    retention_days: str = _RETENTION,
    dead_retention_days: str = _DEAD_RETENTION,
    keep_dead: bool = _KEEP_DEAD,
    purge_older_than_days: str | None = _PURGE,
    batch_size: str = _BATCH,
    pause: str = _PAUSE,
    cron_dsn: str | None = _CRON_DSN,
    create_extension: bool = typer.Option(
        False,
        "--create-extension",
        help="Run CREATE EXTENSION pg_cron in the cron database if it is missing (superuser).",
    ),
) -> None:
    """Register (or update) the pg_cron jobs that archive this outbox database."""
    if not cron_expr.strip():
        usage_error("--cron must not be empty (for example --cron '0 3 * * *')")
    config = _config(
        retention_days, dead_retention_days, keep_dead, purge_older_than_days, batch_size, pause
    )
    outbox_dsn = state(ctx).dsn()
    with connection(ctx, autocommit=True) as outbox:
        specs = cron.archive_job_specs(outbox, schedule=cron_expr, config=config)
        where = cron.locate(outbox, outbox_dsn, cron_dsn=cron_dsn)
    database = specs[0].database
    with db.connect(where.dsn, autocommit=True) as cron_conn:
        version = cron.ensure_extension(cron_conn, create=create_extension)
        scheduled = cron.schedule(cron_conn, specs)
        wanted = {s.name for s in specs}
        # Scheduling states the whole wish: a purge job left from an earlier schedule goes.
        stale = [n for n in cron.job_names(database) if n not in wanted]
        removed = cron.unschedule(cron_conn, stale)
    info(f"pg_cron {version} in database '{where.database}'; jobs run in database '{database}'")
    for job, spec in zip(scheduled, specs, strict=True):
        verb = "scheduled" if job.created else "updated"
        print(f"{verb} {job.name} (job {job.jobid}) '{spec.schedule}': {spec.command}")
    for name in removed:
        print(f"unscheduled {name} (no --purge-older-than-days)")


@app.command()
def unschedule(ctx: typer.Context, cron_dsn: str | None = _CRON_DSN) -> None:
    """Remove this outbox database's pg_cron jobs."""
    outbox_dsn = state(ctx).dsn()
    with connection(ctx, autocommit=True) as outbox:
        where = cron.locate(outbox, outbox_dsn, cron_dsn=cron_dsn)
        database = str(outbox.info.dbname)
    with db.connect(where.dsn, autocommit=True) as cron_conn:
        cron.ensure_extension(cron_conn)
        removed = cron.unschedule(cron_conn, cron.job_names(database))
    if not removed:
        print(f"no dispatchbox jobs were scheduled for database '{database}'")
    for name in removed:
        print(f"unscheduled {name}")


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return "-" if value is None else str(value)


@app.command()
def status(
    ctx: typer.Context,
    cron_dsn: str | None = _CRON_DSN,
    runs: str = typer.Option("5", "--runs", metavar="N", help="Last runs to show per job."),
    output: str = _FORMAT,
) -> None:
    """Show this outbox database's pg_cron jobs and their last runs (cron.job_run_details)."""
    limit = _int("--runs", runs, minimum=0)
    fmt = _format(output)
    outbox_dsn = state(ctx).dsn()
    with connection(ctx, autocommit=True) as outbox:
        where = cron.locate(outbox, outbox_dsn, cron_dsn=cron_dsn)
        database = str(outbox.info.dbname)
    names = cron.job_names(database)
    with db.connect(where.dsn, autocommit=True) as cron_conn:
        cron.ensure_extension(cron_conn)
        found = cron.jobs(cron_conn, names)
        history = cron.last_runs(cron_conn, names, limit=limit) if limit else []
    if fmt == "json":
        out = {
            "cron_database": where.database,
            "database": database,
            "jobs": [
                {
                    **job,
                    "runs": [
                        {k: _iso(v) if k.endswith("_time") else v for k, v in r.items()}
                        for r in history
                        if r["jobname"] == job["jobname"]
                    ],
                }
                for job in found
            ],
        }
        print(json.dumps(out))
        return
    if not found:
        print(f"no dispatchbox jobs scheduled for database '{database}'")
        print("schedule them with: dispatchbox archive schedule --cron '0 3 * * *'")
        return
    for job in found:
        state_text = "active" if job["active"] else "inactive"
        print(f"{job['jobname']}  (job {job['jobid']}, {state_text}, user {job['username']})")
        print(f"  schedule  {job['schedule']}")
        print(f"  command   {job['command']}")
        mine = [r for r in history if r["jobname"] == job["jobname"]]
        if not mine:
            print("  last runs none yet")
            continue
        print("  last runs")
        for r in mine:
            took = "-"
            if r["start_time"] is not None and r["end_time"] is not None:
                took = f"{(r['end_time'] - r['start_time']).total_seconds():.2f}s"
            message = " ".join(str(r["return_message"] or "").split())
            print(f"    {_iso(r['start_time'])}  {r['status']:<10} {took:>8}  {message}")
