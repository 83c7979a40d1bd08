"""pg_cron: find where it lives, check it can be used, and (un)schedule the archival jobs.

pg_cron is one extension per server, created in the one database named by
``cron.database_name`` (``postgres`` by default), which need not be the outbox's. Jobs are
therefore registered there with ``cron.schedule_in_database(name, schedule, command,
outbox_database)``, under names that include the outbox database's name, so two outbox databases
on one server never share a job. Scheduling again under the same name updates the job.

What can be wrong, each with its own message that says how to fix it: the package is not
installed; it is installed but not in ``shared_preload_libraries``; the extension is not created
in the cron database; the role may not schedule jobs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo

from dispatchbox.data import archive as data
from dispatchbox.data import partition as partition_data
from dispatchbox.db import describe
from dispatchbox.errors import InvalidArchiveSettings, PgCronUnavailable
from dispatchbox.maintenance.archiver import ArchiverConfig, require_schema

logger = logging.getLogger("dispatchbox.cron")

DEFAULT_SCHEDULE = "0 3 * * *"
ARCHIVE_JOB = "dispatchbox-archive"
PURGE_JOB = "dispatchbox-purge"
# A partitioned outbox (migration 0013): partitions ahead of the ids and retirement. Frequent,
# whatever the archive's schedule: an insert whose id has no partition fails.
PARTITION_JOB = "dispatchbox-partitions"
PARTITION_SCHEDULE = "*/5 * * * *"
# cron.job.jobname is of type name: PostgreSQL cuts it at 63 bytes, silently.
_NAME_BYTES = 63


def job_name(kind: str, database: str) -> str:
    """``<kind>-<database>``; when too long for a name, a cut database name and a short hash,
    so that two long database names with the same beginning still get different jobs."""
    full = f"{kind}-{database}"
    if len(full.encode()) <= _NAME_BYTES:
        return full
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    room = _NAME_BYTES - len(kind.encode()) - len(digest) - 2
    cut = database.encode()[:room].decode(errors="ignore")
    return f"{kind}-{cut}-{digest}"


def job_names(database: str) -> list[str]:
    """Every job dispatchbox may register for this outbox database."""
    return [
        job_name(ARCHIVE_JOB, database),
        job_name(PURGE_JOB, database),
        job_name(PARTITION_JOB, database),
    ]


def _enable_lines(cron_database: str) -> str:
    return (
        f"add to postgresql.conf: shared_preload_libraries = 'pg_cron' (keep any libraries "
        f"already listed) and cron.database_name = '{cron_database}', restart PostgreSQL "
        f"(a reload is not enough), then run CREATE EXTENSION pg_cron; in database "
        f"'{cron_database}' as a superuser"
    )


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What a server says about pg_cron, as any role can see it."""

    available_version: str | None  # None: the package is not installed on the server
    launcher_running: bool  # True: the library is preloaded and its launcher started
    cron_database: str | None  # cron.database_name, None when the library is not loaded
    server_major: int
    database: str  # the database this connection is in

    def problem(self, where: str) -> str | None:
        """Why pg_cron cannot be used on this server, with how to enable it; None when usable
        (apart from the extension, which lives in the cron database)."""
        suggested = self.cron_database or "postgres"
        if self.available_version is None:
            return (
                f"pg_cron is not installed on the PostgreSQL server at {where}: install it "
                f"(Debian/Ubuntu: postgresql-{self.server_major}-cron, RHEL: "
                f"pg_cron_{self.server_major}), then {_enable_lines(suggested)}"
            )
        if not self.launcher_running:
            return (
                f"pg_cron is installed on the PostgreSQL server at {where} but not loaded "
                f"(it is not in shared_preload_libraries): {_enable_lines(suggested)}"
            )
        return None


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = data.cron_server_facts(conn)
    return ServerFacts(
        available_version=row["available_version"],
        launcher_running=bool(row["launcher_running"]),
        cron_database=row["cron_database"] or None,
        server_major=int(row["server_major"]),
        database=str(row["database"]),
    )


@dataclass(frozen=True, slots=True)
class CronLocation:
    """Where pg_cron lives: the DSN to reach it and its database's name."""

    dsn: str
    database: str


def locate(
    outbox_conn: psycopg.Connection[Any], outbox_dsn: str, *, cron_dsn: str | None = None
) -> CronLocation:
    """The cron database of the outbox's server: ``cron_dsn`` when given, else the outbox DSN
    with its database replaced by ``cron.database_name``. Raises PgCronUnavailable, with the
    fix, when pg_cron is not installed or not loaded."""
    facts = server_facts(outbox_conn)
    problem = facts.problem(describe(outbox_dsn))
    if problem:
        raise PgCronUnavailable(problem)
    assert facts.cron_database is not None
    if cron_dsn:
        return CronLocation(dsn=cron_dsn, database=facts.cron_database)
    return CronLocation(
        dsn=conninfo.make_conninfo(outbox_dsn, dbname=facts.cron_database),
        database=facts.cron_database,
    )


def ensure_extension(cron_conn: psycopg.Connection[Any], *, create: bool = False) -> str:
    """The pg_cron extension's version in the cron database, creating it when ``create``.
    Raises PgCronUnavailable when it is missing (or cannot be created), or when this connection
    is not to the database named by cron.database_name."""
    facts = server_facts(cron_conn)
    if facts.cron_database is not None and facts.database != facts.cron_database:
        raise PgCronUnavailable(
            f"the cron connection is to database '{facts.database}', but pg_cron lives in "
            f"database '{facts.cron_database}' (cron.database_name): point --cron-dsn "
            f"(DISPATCHBOX_CRON_DSN) there"
        )
    version = data.cron_extension_version(cron_conn)
    if version is not None:
        return version
    if not create:
        raise PgCronUnavailable(
            f"pg_cron is loaded but its extension is not created in database "
            f"'{facts.database}' (cron.database_name): run CREATE EXTENSION pg_cron; there as "
            f"a superuser, or let `dispatchbox archive schedule --create-extension` do it"
        )
    try:
        with cron_conn.transaction():
            data.cron_create_extension(cron_conn)
    except psycopg.errors.InsufficientPrivilege:
        raise PgCronUnavailable(
            f"cannot create the pg_cron extension in database '{facts.database}': permission "
            f"denied (CREATE EXTENSION pg_cron needs a superuser)"
        ) from None
    logger.info("created the pg_cron extension in database %s", facts.database)
    return str(data.cron_extension_version(cron_conn))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One pg_cron job: its name, cron expression, SQL command and the database it runs in."""

    name: str
    schedule: str
    command: str
    database: str


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    name: str
    jobid: int
    created: bool  # False: a job of that name existed and was updated


def archive_job_specs(
    outbox_conn: psycopg.Connection[Any], *, schedule: str, config: ArchiverConfig
) -> list[JobSpec]:
    """The archive job (done, then dead rows), when config.purge_after_days is set the purge
    job, and when the outbox is partitioned the partition job (every five minutes, retiring
    partitions after ``config.retention_days``), for the outbox database of ``outbox_conn``."""
    if not schedule.strip():
        raise InvalidArchiveSettings("the cron expression must not be empty")
    schema = require_schema(outbox_conn)
    database = str(outbox_conn.info.dbname)
    command = data.job_command(
        outbox_conn,
        {
            "schema": schema,
            "retention_days": config.retention_days,
            "dead_retention_days": config.dead_retention_days,
            "batch_size": config.batch_size,
            "pause_seconds": config.pause_seconds,
        },
    )
    specs = [JobSpec(job_name(ARCHIVE_JOB, database), schedule.strip(), command, database)]
    if config.purge_after_days is not None:
        purge = data.purge_job_command(
            outbox_conn,
            {
                "schema": schema,
                "older_than_days": config.purge_after_days,
                "batch_size": config.batch_size,
                "pause_seconds": config.pause_seconds,
            },
        )
        specs.append(JobSpec(job_name(PURGE_JOB, database), schedule.strip(), purge, database))
    if partition_data.is_partitioned(outbox_conn):
        command = partition_data.job_command(outbox_conn, schema, config.retention_days)
        name = job_name(PARTITION_JOB, database)
        specs.append(JobSpec(name, PARTITION_SCHEDULE, command, database))
    return specs


def schedule(cron_conn: psycopg.Connection[Any], specs: list[JobSpec]) -> list[ScheduledJob]:
    """Register (or update) each job, all or none."""
    out: list[ScheduledJob] = []
    try:
        with cron_conn.transaction():
            for spec in specs:
                existing = data.cron_job_id(cron_conn, spec.name)
                jobid = data.cron_schedule(
                    cron_conn,
                    name=spec.name,
                    schedule=spec.schedule,
                    command=spec.command,
                    database=spec.database,
                )
                out.append(ScheduledJob(spec.name, jobid, created=existing is None))
    except psycopg.errors.InsufficientPrivilege:
        raise PgCronUnavailable(
            "this role may not schedule jobs in another database: schedule as a superuser, or "
            "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,"
            "boolean) TO the role, in the cron database"
        ) from None
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        if "invalid schedule" in message:
            raise InvalidArchiveSettings(
                f"pg_cron rejected the cron expression: {message}"
            ) from None
        raise
    for job in out:
        logger.info(
            "%s pg_cron job %s (id %d)",
            "created" if job.created else "updated",
            job.name,
            job.jobid,
        )
    return out


def unschedule(cron_conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
    """Remove this role's jobs with these names; return the names removed."""
    with cron_conn.transaction():
        rows = data.cron_unschedule(cron_conn, names)
    return [str(r["jobname"]) for r in rows if r["removed"]]


def jobs(cron_conn: psycopg.Connection[Any], names: list[str]) -> list[data.Row]:
    return data.cron_jobs(cron_conn, names)


def last_runs(
    cron_conn: psycopg.Connection[Any], names: list[str], *, limit: int = 5
) -> list[data.Row]:
    """The latest runs of these jobs from cron.job_run_details, newest first."""
    return data.cron_last_runs(cron_conn, names, limit=limit)
