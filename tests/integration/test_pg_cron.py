"""pg_cron for real: locate it, schedule, run the job's command, let pg_cron itself run it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from dispatchbox.errors import PgCronUnavailable
from dispatchbox.maintenance import cron, partitioner
from dispatchbox.maintenance.archiver import ArchiverConfig
from tests.integration.test_archive import add, ids_in
from tests.pg import PgServer, skip_outside_ci

pytestmark = pytest.mark.pg_cron

Conn = psycopg.Connection[Any]


def _dbname(dsn: str) -> str:
    return str(conninfo.conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def cron_conn(pg_cron: PgServer, db_dsn: str) -> Iterator[Conn]:
    """An autocommit connection to the cron database, with the extension created; the test
    database's jobs are removed afterwards (the database itself is dropped)."""
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        where = cron.locate(outbox, db_dsn)
    with psycopg.connect(where.dsn, autocommit=True) as conn:
        cron.ensure_extension(conn, create=True)
        try:
            yield conn
        finally:
            cron.unschedule(conn, cron.job_names(_dbname(db_dsn)))


def _specs(db_dsn: str, schedule: str, config: ArchiverConfig) -> list[cron.JobSpec]:
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        return cron.archive_job_specs(outbox, schedule=schedule, config=config)


def test_locate_finds_the_cron_database_of_the_outbox_server(
    pg_cron: PgServer, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        facts = cron.server_facts(outbox)
        where = cron.locate(outbox, db_dsn)
        explicit = cron.locate(outbox, db_dsn, cron_dsn=pg_cron.dsn("postgres"))
    assert facts.problem("here") is None
    assert facts.launcher_running and facts.available_version
    assert where.database == facts.cron_database == "postgres"
    assert _dbname(where.dsn) == "postgres"
    # Same server, same user: only the database differs.
    parts, outbox_parts = conninfo.conninfo_to_dict(where.dsn), conninfo.conninfo_to_dict(db_dsn)
    assert {k: v for k, v in parts.items() if k != "dbname"} == {
        k: v for k, v in outbox_parts.items() if k != "dbname"
    }
    assert explicit.dsn == pg_cron.dsn("postgres")


def test_a_connection_to_the_wrong_database_is_refused(cron_conn: Conn, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as outbox, pytest.raises(PgCronUnavailable) as e:
        cron.ensure_extension(outbox)
    assert "pg_cron lives in database 'postgres'" in str(e.value)
    assert _dbname(db_dsn) in str(e.value)


def test_schedule_creates_then_updates_the_named_job(cron_conn: Conn, db_dsn: str) -> None:
    database = _dbname(db_dsn)
    config = ArchiverConfig(retention_days=7, dead_retention_days=30, batch_size=500)
    first = cron.schedule(cron_conn, _specs(db_dsn, "0 3 * * *", config))
    assert [(j.name, j.created) for j in first] == [(f"dispatchbox-archive-{database}", True)]

    jobs = cron.jobs(cron_conn, cron.job_names(database))
    assert len(jobs) == 1
    job = jobs[0]
    assert job["database"] == database and job["schedule"] == "0 3 * * *" and job["active"]
    assert job["command"] == (
        "CALL public.run_outbox_archival(retention_days => 7, dead_retention_days => 30, "
        "batch_size => 500, pause_seconds => 0.1)"
    )

    purge = ArchiverConfig(retention_days=3, dead_retention_days=None, purge_after_days=90)
    second = cron.schedule(cron_conn, _specs(db_dsn, "15 4 * * *", purge))
    assert [(j.name, j.created) for j in second] == [
        (f"dispatchbox-archive-{database}", False),
        (f"dispatchbox-purge-{database}", True),
    ]
    assert second[0].jobid == first[0].jobid
    jobs = {j["jobname"]: j for j in cron.jobs(cron_conn, cron.job_names(database))}
    archive_job = jobs[f"dispatchbox-archive-{database}"]
    assert archive_job["schedule"] == "15 4 * * *"
    assert "dead_retention_days => NULL" in archive_job["command"]
    assert jobs[f"dispatchbox-purge-{database}"]["command"] == (
        "CALL public.run_outbox_archive_purge(older_than_days => 90, batch_size => 10000, "
        "pause_seconds => 0.1)"
    )


def test_the_job_command_run_as_pg_cron_runs_it_archives_rows(cron_conn: Conn, db_dsn: str) -> None:
    database = _dbname(db_dsn)
    config = ArchiverConfig(
        retention_days=7, dead_retention_days=30, batch_size=3, pause_seconds=0.05
    )
    cron.schedule(cron_conn, _specs(db_dsn, "0 3 * * *", config))
    (job,) = cron.jobs(cron_conn, [cron.job_name(cron.ARCHIVE_JOB, database)])

    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        old_done = add(outbox, "done", age_days=8, n=10)
        old_dead = add(outbox, "dead", age_days=31, n=4, errors=2)
        keep = add(outbox, "done", age_days=1, n=2) + add(outbox, "dead", age_days=8, n=1)
        keep += add(outbox, "pending", n=2) + add(outbox, "running", n=1)
        # pg_cron sends the command as one simple query on an autocommit session, as here.
        outbox.execute(job["command"].encode())
        assert ids_in(outbox, "outbox_event_archive") == set(old_done + old_dead)
        assert ids_in(outbox, "outbox_event") == set(keep)
        assert outbox.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (8,)


def test_unschedule_removes_only_this_databases_jobs(cron_conn: Conn, db_dsn: str) -> None:
    database = _dbname(db_dsn)
    cron.schedule(cron_conn, _specs(db_dsn, "0 3 * * *", ArchiverConfig(purge_after_days=30)))
    # Another outbox database's job on the same server, same role.
    other = cron.JobSpec("dispatchbox-archive-someotherdb", "0 3 * * *", "SELECT 1", "postgres")
    cron.schedule(cron_conn, [other])
    try:
        removed = cron.unschedule(cron_conn, cron.job_names(database))
        assert sorted(removed) == [
            f"dispatchbox-archive-{database}",
            f"dispatchbox-purge-{database}",
        ]
        assert cron.jobs(cron_conn, cron.job_names(database)) == []
        assert [j["jobname"] for j in cron.jobs(cron_conn, [other.name])] == [other.name]
        assert cron.unschedule(cron_conn, cron.job_names(database)) == []
    finally:
        cron.unschedule(cron_conn, [other.name])


def test_job_names_fit_in_a_postgres_name_and_stay_distinct() -> None:
    long_a = "outbox_" + "a" * 56 + "_one"
    long_b = "outbox_" + "a" * 56 + "_two"
    a, b = cron.job_name(cron.ARCHIVE_JOB, long_a), cron.job_name(cron.ARCHIVE_JOB, long_b)
    assert a != b
    assert len(a.encode()) <= 63 and len(b.encode()) <= 63
    assert cron.job_name(cron.ARCHIVE_JOB, "shop") == "dispatchbox-archive-shop"
    assert len(cron.job_name(cron.PURGE_JOB, "ż" * 40).encode()) <= 63


def test_messages_say_what_is_missing_and_how_to_enable_it() -> None:
    missing = cron.ServerFacts(None, False, None, 15, "shop").problem("host db port 5432")
    assert missing is not None
    assert "not installed" in missing and "postgresql-15-cron" in missing
    assert "shared_preload_libraries = 'pg_cron'" in missing
    assert "cron.database_name = 'postgres'" in missing and "\n" not in missing

    not_loaded = cron.ServerFacts("1.4-1", False, None, 15, "shop").problem("host db port 5432")
    assert not_loaded is not None
    assert "installed" in not_loaded and "not loaded" in not_loaded
    assert "shared_preload_libraries = 'pg_cron'" in not_loaded and "restart" in not_loaded

    assert cron.ServerFacts("1.4-1", True, "postgres", 15, "shop").problem("x") is None


def test_missing_extension_is_reported_and_can_be_created(pg_cron: PgServer, db_dsn: str) -> None:
    if pg_cron.cluster is None:
        skip_outside_ci("drops the pg_cron extension: only on a throwaway cluster we own")
    with psycopg.connect(pg_cron.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP EXTENSION IF EXISTS pg_cron")
        with pytest.raises(PgCronUnavailable) as e:
            cron.ensure_extension(conn)
        assert "extension is not created in database 'postgres'" in str(e.value)
        assert "CREATE EXTENSION pg_cron" in str(e.value)
        version = cron.ensure_extension(conn, create=True)
        assert (
            version
            == conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
            ).fetchone()[0]
        )


@pytest.mark.slow
def test_pg_cron_itself_runs_the_job_and_archives_rows(cron_conn: Conn, db_dsn: str) -> None:
    database = _dbname(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        old_done = add(outbox, "done", age_days=8, n=50)
        old_dead = add(outbox, "dead", age_days=31, n=5, errors=1)
        keep = add(outbox, "pending", n=3) + add(outbox, "done", age_days=1, n=2)
    config = ArchiverConfig(retention_days=7, dead_retention_days=30, batch_size=20)
    (job,) = cron.schedule(cron_conn, _specs(db_dsn, "* * * * *", config))

    # pg_cron starts jobs on the minute: at most 60 s, plus a margin for the run itself.
    deadline = time.monotonic() + 75
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = [
            r
            for r in cron.last_runs(cron_conn, [job.name], limit=5)
            if r["status"] in ("succeeded", "failed")
        ]
        if runs:
            break
        time.sleep(0.5)
    assert runs, "pg_cron did not run the job within 75 s"
    assert runs[0]["status"] == "succeeded", runs[0]["return_message"]
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        assert ids_in(outbox, "outbox_event_archive") == set(old_done + old_dead)
        assert ids_in(outbox, "outbox_event") == set(keep)
    assert database in {r["database"] for r in cron.jobs(cron_conn, [job.name])}


def test_a_partitioned_outbox_gets_the_partition_job_and_its_command_retires(
    cron_conn: Conn, db_dsn: str
) -> None:
    database = _dbname(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        assert [
            s.name
            for s in cron.archive_job_specs(outbox, schedule="0 3 * * *", config=ArchiverConfig())
        ] == [cron.job_name(cron.ARCHIVE_JOB, database)]
        first = partitioner.convert(outbox, partition_size=1000).first_bound
        old = outbox.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, done_at)"
            " SELECT 'order', g::text, 'e', 'done', now() - interval '8 days'"
            " FROM generate_series(1, 1001) g RETURNING id"
        ).fetchall()
    cron.schedule(cron_conn, _specs(db_dsn, "0 3 * * *", ArchiverConfig(retention_days=7)))
    (job,) = cron.jobs(cron_conn, [cron.job_name(cron.PARTITION_JOB, database)])
    assert job["schedule"] == cron.PARTITION_SCHEDULE
    assert job["command"] == "CALL public.outbox_partition_maintain(retention_days => 7)"
    with psycopg.connect(db_dsn, autocommit=True) as outbox:
        outbox.execute(job["command"].encode())
        names = [p["partition_name"] for p in partitioner.partitions(outbox)]
        archived = ids_in(outbox, "outbox_event_archive")
    assert f"outbox_event_p{first}" not in names and "outbox_event_p0" not in names
    assert archived == {row[0] for row in old[:1000]}
