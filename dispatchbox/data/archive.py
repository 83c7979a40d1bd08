"""Archival statements (sql/queries/archive.sql): retention cutoffs, batches moved into the
archive and purged from it, and the pg_cron jobs that run them in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def cutoff(conn: Conn, days: int) -> datetime:
    """The moment ``days`` days ago by the database's clock (the cutoff of a retention)."""
    value: datetime = queries.fetch_value(conn, "archive_cutoff", {"days": days})
    return value


def move_batch(conn: Conn, status: str, cutoff: datetime, batch_size: int) -> int:
    """Move one batch of ``status`` rows older than the cutoff into the archive, with their
    errors; return how many moved."""
    params = {"status": status, "cutoff": cutoff, "batch_size": batch_size}
    return int(queries.fetch_value(conn, "archive_batch", params))


def purge_batch(conn: Conn, cutoff: datetime, batch_size: int) -> int:
    """Delete one batch of events archived before the cutoff (with their archived errors)."""
    params = {"cutoff": cutoff, "batch_size": batch_size}
    return int(queries.fetch_value(conn, "archive_purge_batch", params))


def target(conn: Conn) -> Row:
    """This database's name (``database``) and the schema of the archival functions
    (``schema``, None before migration 0002)."""
    row = queries.fetch_one(conn, "archive_target")
    assert row is not None
    return row


def job_command(conn: Conn, params: dict[str, Any]) -> str:
    """The statement the pg_cron archive job runs, quoted by the server."""
    return str(queries.fetch_value(conn, "archive_job_command", params))


def purge_job_command(conn: Conn, params: dict[str, Any]) -> str:
    """The statement the pg_cron purge job runs, quoted by the server."""
    return str(queries.fetch_value(conn, "archive_purge_job_command", params))


# -- pg_cron -----------------------------------------------------------------------------------


def cron_server_facts(conn: Conn) -> Row:
    """Whether the server has pg_cron, whether it is loaded, and the database it lives in."""
    row = queries.fetch_one(conn, "pg_cron_server_facts")
    assert row is not None
    return row


def cron_extension_version(conn: Conn) -> str | None:
    """The pg_cron extension's version in this database, None when it is not created here."""
    version = queries.fetch_value(conn, "pg_cron_extension_version")
    return None if version is None else str(version)


def cron_create_extension(conn: Conn) -> None:
    queries.execute(conn, "pg_cron_create_extension")


def cron_job_id(conn: Conn, name: str) -> int | None:
    """The id of this role's job with this name, if any."""
    jobid = queries.fetch_value(conn, "pg_cron_job_id", {"name": name})
    return None if jobid is None else int(jobid)


def cron_schedule(conn: Conn, *, name: str, schedule: str, command: str, database: str) -> int:
    """Create the named job, or update this role's job of that name; return its id."""
    params = {"name": name, "schedule": schedule, "command": command, "database": database}
    return int(queries.fetch_value(conn, "pg_cron_schedule", params))


def cron_unschedule(conn: Conn, names: list[str]) -> list[Row]:
    """Remove this role's jobs with these names: a row (jobname, removed) per job."""
    return queries.fetch_all(conn, "pg_cron_unschedule", {"names": names})


def cron_jobs(conn: Conn, names: list[str]) -> list[Row]:
    """The jobs with these names, as pg_cron stores them."""
    return queries.fetch_all(conn, "pg_cron_jobs", {"names": names})


def cron_last_runs(conn: Conn, names: list[str], *, limit: int) -> list[Row]:
    """The latest runs of these jobs, newest first, at most ``limit`` per job."""
    return queries.fetch_all(conn, "pg_cron_last_runs", {"names": names, "limit": limit})
