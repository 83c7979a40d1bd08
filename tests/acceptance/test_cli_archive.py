"""The real `dispatchbox archive ...` commands: run, purge, schedule, status, unschedule."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo

from dispatchbox import migrations
from dispatchbox.maintenance import cron
from dispatchbox.tempcluster import TempCluster, find_bindir
from tests.conftest import CliResult, run_cli
from tests.integration.test_archive import add, ids_in
from tests.pg import PgServer, skip_outside_ci


def _dbname(dsn: str) -> str:
    return str(conninfo.conninfo_to_dict(dsn)["dbname"])


def one_line_error(result: CliResult, code: int) -> str:
    assert result.code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_archive_run_moves_old_rows_and_prints_the_counts(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_done = add(conn, "done", age_days=8, n=12)
        old_dead = add(conn, "dead", age_days=40, n=3, errors=2)
        keep = add(conn, "done", age_days=2, n=2) + add(conn, "dead", age_days=10, n=1)
        keep += add(conn, "pending", age_days=100, n=2) + add(conn, "running", n=1)

    result = run_cli("archive", "run", "--retention-days", "7", "--batch-size", "5", dsn=db_dsn)
    assert result.code == 0, result.stderr
    assert "archived 12 done events (done more than 7 days ago)" in result.stdout
    assert "archived 3 dead events (dead more than 30 days ago)" in result.stdout
    with psycopg.connect(db_dsn) as conn:
        assert ids_in(conn, "outbox_event_archive") == set(old_done + old_dead)
        assert ids_in(conn, "outbox_event") == set(keep)
        assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (6,)

    again = run_cli("archive", "run", "--format", "json", "--keep-dead", dsn=db_dsn)
    assert again.code == 0, again.stderr
    figures = json.loads(again.stdout)
    assert (figures["done_archived"], figures["dead_archived"], figures["purged"]) == (0, 0, None)

    zero = run_cli(
        "archive",
        "run",
        "--retention-days",
        "0",
        "--dead-retention-days",
        "0",
        "--purge-older-than-days",
        "0",
        "--format",
        "json",
        dsn=db_dsn,
    )
    assert zero.code == 0, zero.stderr
    # 2 done and 1 dead moved; purge right after sees rows archived before its own start.
    figures = json.loads(zero.stdout)
    assert (figures["done_archived"], figures["dead_archived"]) == (2, 1)
    assert figures["purged"] >= 15


def test_archive_purge(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add(conn, "done", age_days=8, n=4)
        add(conn, "dead", age_days=40, n=2, errors=1)
    assert run_cli("archive", "run", dsn=db_dsn).code == 0
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox_event_archive SET archived_at = now() - interval '100 days' "
            "WHERE status = 'dead'"
        )
    result = run_cli("archive", "purge", "--older-than-days", "90", dsn=db_dsn)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "purged 2 archived events (archived more than 90 days ago)"
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute(
            "SELECT status, count(*) FROM outbox_event_archive GROUP BY 1"
        ).fetchall() == [("done", 4)]
        assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (0,)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--retention-days", "-1"], "--retention-days must be 0 or more"),
        (["run", "--retention-days", "seven"], "--retention-days must be a whole number"),
        (["run", "--dead-retention-days", "1.5"], "--dead-retention-days must be a whole number"),
        (["run", "--batch-size", "0"], "--batch-size must be 1 or more"),
        (["run", "--format", "xml"], "--format must be table or json"),
        (["run", "--pause", "-1"], "--pause must be between 0 and 3600 seconds"),
        (["schedule", "--pause", "soon"], "--pause must be a number of seconds"),
        (["purge", "--older-than-days", "-2"], "--older-than-days must be 0 or more"),
        (["schedule", "--cron", "  "], "--cron must not be empty"),
        (["schedule", "--retention-days", "x"], "--retention-days must be a whole number"),
        (["status", "--runs", "-1"], "--runs must be 0 or more"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db_dsn: str, args: list[str], expected: str) -> None:
    line = one_line_error(run_cli("archive", *args, dsn=db_dsn), 2)
    assert expected in line


def test_before_migration_0002_the_command_says_so(empty_db_dsn: str) -> None:
    line = one_line_error(run_cli("archive", "run", dsn=empty_db_dsn), 1)
    assert "lacks migration 0002_archival" in line and "dispatchbox db migrate" in line


@pytest.fixture
def cron_admin(pg_cron: PgServer, db_dsn: str) -> Iterator[psycopg.Connection[object]]:
    with psycopg.connect(pg_cron.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        try:
            yield conn
        finally:
            cron.unschedule(conn, cron.job_names(_dbname(db_dsn)))


@pytest.mark.pg_cron
def test_schedule_status_unschedule(
    cron_admin: psycopg.Connection[object], db_dsn: str, pg_cron: PgServer
) -> None:
    database = _dbname(db_dsn)
    archive_job = f"dispatchbox-archive-{database}"
    purge_job = f"dispatchbox-purge-{database}"

    empty = run_cli("archive", "status", dsn=db_dsn)
    assert empty.code == 0, empty.stderr
    assert f"no dispatchbox jobs scheduled for database '{database}'" in empty.stdout

    created = run_cli(
        "archive",
        "schedule",
        "--cron",
        "*/10 * * * *",
        "--retention-days",
        "3",
        "--dead-retention-days",
        "60",
        "--purge-older-than-days",
        "365",
        dsn=db_dsn,
    )
    assert created.code == 0, created.stderr
    assert f"scheduled {archive_job}" in created.stdout
    assert f"scheduled {purge_job}" in created.stdout
    assert "in database 'postgres'" in created.stderr

    rows = cron_admin.execute(
        "SELECT jobname, schedule, database, command FROM cron.job WHERE jobname = ANY(%s) "
        "ORDER BY jobname",
        [[archive_job, purge_job]],
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (archive_job, "*/10 * * * *", database),
        (purge_job, "*/10 * * * *", database),
    ]
    assert "retention_days => 3, dead_retention_days => 60" in str(rows[0][3])
    assert "pause_seconds => 0.1)" in str(rows[0][3])

    # Again, without purge and with another schedule: the archive job is updated in place and
    # the purge job goes.
    updated = run_cli("archive", "schedule", "--cron", "0 2 * * *", "--keep-dead", dsn=db_dsn)
    assert updated.code == 0, updated.stderr
    assert f"updated {archive_job}" in updated.stdout
    assert f"unscheduled {purge_job}" in updated.stdout
    rows = cron_admin.execute(
        "SELECT jobid, schedule, command FROM cron.job WHERE jobname = ANY(%s)",
        [[archive_job, purge_job]],
    ).fetchall()
    assert len(rows) == 1 and rows[0][1] == "0 2 * * *"
    assert "dead_retention_days => NULL" in str(rows[0][2])

    # A finished run, as pg_cron records it, shows up in status.
    cron_admin.execute(
        "INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,"
        " return_message, start_time, end_time) VALUES (%s, 1, %s, 'postgres', 'CALL', "
        "'succeeded', 'CALL', now() - interval '2 s', now())",
        [rows[0][0], database],
    )
    status = run_cli("archive", "status", dsn=db_dsn)
    assert status.code == 0, status.stderr
    assert archive_job in status.stdout and "0 2 * * *" in status.stdout
    assert "succeeded" in status.stdout
    as_json = json.loads(run_cli("archive", "status", "--format", "json", dsn=db_dsn).stdout)
    assert as_json["cron_database"] == "postgres" and as_json["database"] == database
    (job,) = as_json["jobs"]
    assert job["jobname"] == archive_job and job["runs"][0]["status"] == "succeeded"

    # --cron-dsn / DISPATCHBOX_CRON_DSN pick the cron database explicitly; a wrong one is named.
    via_env = run_cli(
        "archive", "status", dsn=db_dsn, env={"DISPATCHBOX_CRON_DSN": pg_cron.dsn("postgres")}
    )
    assert via_env.code == 0 and archive_job in via_env.stdout
    wrong = run_cli("archive", "status", "--cron-dsn", db_dsn, dsn=db_dsn)
    assert "pg_cron lives in database 'postgres'" in one_line_error(wrong, 1)

    bad_cron = run_cli("archive", "schedule", "--cron", "every tuesday", dsn=db_dsn)
    assert "pg_cron rejected the cron expression" in one_line_error(bad_cron, 2)

    removed = run_cli("archive", "unschedule", dsn=db_dsn)
    assert removed.code == 0, removed.stderr
    assert removed.stdout.strip() == f"unscheduled {archive_job}"
    assert cron_admin.execute(
        "SELECT count(*) FROM cron.job WHERE jobname = ANY(%s)", [[archive_job, purge_job]]
    ).fetchone() == (0,)
    nothing = run_cli("archive", "unschedule", dsn=db_dsn)
    assert nothing.code == 0 and "no dispatchbox jobs were scheduled" in nothing.stdout


@pytest.fixture(scope="module")
def cluster_without_pg_cron() -> Iterator[str]:
    """A throwaway server that does not preload pg_cron, with a migrated outbox database."""
    if find_bindir() is None:
        skip_outside_ci("needs the local PostgreSQL server binaries")
    cluster = TempCluster()
    cluster.pg_cron = False  # installed on this machine, but left out of shared_preload_libraries
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE shop")
        with psycopg.connect(cluster.dsn("shop"), autocommit=True) as conn:
            migrations.migrate(conn)
        yield cluster.dsn("shop")
    finally:
        cluster.stop()


@pytest.mark.parametrize("verb", ["schedule", "unschedule", "status"])
def test_without_pg_cron_preloaded_the_command_says_how_to_enable_it(
    cluster_without_pg_cron: str, verb: str
) -> None:
    line = one_line_error(run_cli("archive", verb, dsn=cluster_without_pg_cron), 1)
    available = "installed" in line and "not loaded" in line
    missing = "not installed" in line
    assert available or missing, line
    assert "shared_preload_libraries = 'pg_cron'" in line
    assert "cron.database_name = 'postgres'" in line and "restart PostgreSQL" in line
    # archive run needs no pg_cron at all.
    assert run_cli("archive", "run", dsn=cluster_without_pg_cron).code == 0


@pytest.mark.pg_cron
def test_missing_extension_is_reported_then_created_on_request(
    pg_cron: PgServer, db_dsn: str
) -> None:
    if pg_cron.cluster is None:
        skip_outside_ci("drops the pg_cron extension: only on a throwaway cluster we own")
    with psycopg.connect(pg_cron.dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP EXTENSION IF EXISTS pg_cron")
    try:
        line = one_line_error(run_cli("archive", "schedule", dsn=db_dsn), 1)
        assert "extension is not created in database 'postgres'" in line
        assert "--create-extension" in line
        ok = run_cli("archive", "schedule", "--create-extension", dsn=db_dsn)
        assert ok.code == 0, ok.stderr
        assert f"scheduled dispatchbox-archive-{_dbname(db_dsn)}" in ok.stdout
    finally:
        with psycopg.connect(pg_cron.dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            cron.unschedule(admin, cron.job_names(_dbname(db_dsn)))
