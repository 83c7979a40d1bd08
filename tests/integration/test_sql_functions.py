"""Migration 0005's SQL functions (redrive_dead_events as migrations 0007 and 0014 left it),
called as a DBA would (psql, plain SQL, pg_cron), and by the CLI's stats (through the same
function: PostgreSQL's own function statistics say so)."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository
from dispatchbox.filters import DeadEventFilter
from dispatchbox.tempcluster import find_bindir
from tests.conftest import run_cli
from tests.integration.test_repository import make_dead


def psql(dsn: str, statement: str) -> list[list[str]]:
    """Rows of a statement run by the psql client, as a DBA would (or pg_cron's job text)."""
    bindir = find_bindir()
    exe = str(bindir / "psql") if bindir is not None else shutil.which("psql")
    assert exe, "psql is needed: it comes with the PostgreSQL binaries the suite runs on"
    out = subprocess.run(
        [exe, "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", statement],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def psql_while_held(dsn: str, event_id: int, statement: str) -> list[list[str]]:
    """psql's rows for a statement run while another transaction holds the event's row lock."""
    with psycopg.connect(dsn) as other:
        other.execute("SELECT 1 FROM outbox_event WHERE id = %s FOR UPDATE", [event_id])
        rows = psql(dsn, statement)
        other.rollback()
    return rows


def fail_updates_where(conn: psycopg.Connection[Any], condition: str) -> None:
    """Make every update of an outbox row matching ``condition`` (on NEW) raise 'boom'."""
    conn.execute(
        f"""
        CREATE FUNCTION test_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN RAISE EXCEPTION 'boom'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_boom BEFORE UPDATE ON outbox_event
            FOR EACH ROW EXECUTE FUNCTION test_boom();
        """
    )


def test_dead_event_stats_from_psql(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        make_dead(conn, 3, event_type="order.paid", error="TimeoutError: gateway {i}s")
        make_dead(conn, 1, event_type="user.created", aggregate_type="user")
    rows = psql(db_dsn, "SELECT key, count FROM dead_event_stats()")
    assert rows == [["order.paid", "3"], ["user.created", "1"]]
    rows = psql(db_dsn, "SELECT key, count FROM dead_event_stats('aggregate_type')")
    assert rows == [["order", "3"], ["user", "1"]]
    by_error = psql(
        db_dsn,
        "SELECT count, signature FROM dead_event_stats('error', error_contains => 'gateway')",
    )
    assert by_error == [["3", "TimeoutError: gateway <n>s"]]
    with pytest.raises(subprocess.CalledProcessError) as bad:
        psql(db_dsn, "SELECT * FROM dead_event_stats('colour')")
    assert "by must be event_type, aggregate_type, destination or error" in bad.value.stderr


def test_error_contains_is_literal_in_sql_too(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        make_dead(conn, 1, error="ValueError: 100% of a_b")
        make_dead(conn, 1, error="ValueError: 1000 of axb")
    rows = psql(db_dsn, "SELECT count FROM dead_event_stats(error_contains => '0% of a_b')")
    assert rows == [["1"]]


def test_redrive_returns_processed_skipped_failed(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        ids = make_dead(conn, 6)
        # A batch whose update raises: the event's aggregate_id is 'boom'.
        conn.execute("UPDATE outbox_event SET aggregate_id = 'boom' WHERE id = %s", [ids[4]])
        fail_updates_where(conn, "NEW.aggregate_id = 'boom'")
        conn.commit()
    # Another transaction holds ids[1]: the redrive skips it, never waits for it.
    rows = psql_while_held(
        db_dsn, ids[1], "SELECT * FROM redrive_dead_events(batch_size => 1, actor => 'dba')"
    )
    processed, skipped, failed, last_id = rows[0]
    assert (processed, skipped, failed) == ("4", "1", "1")
    assert int(last_id) == ids[-1]
    with psycopg.connect(db_dsn) as conn:
        status = dict(conn.execute("SELECT id, status FROM outbox_event").fetchall())
        by = conn.execute(
            "SELECT DISTINCT last_redriven_by FROM outbox_event WHERE status = 'pending'"
        ).fetchall()
    assert [i for i in ids if status[i] == "dead"] == [ids[1], ids[4]]
    assert by == [("dba",)]


def _dead_of_aggregate(conn: psycopg.Connection[Any], aggregate_id: str, n: int) -> list[int]:
    """n dead events of one aggregate, in id order."""
    rows = conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, attempts,"
        " max_attempts, last_error, last_error_at, dead_at)"
        " SELECT 'order', %s, 'order.paid', 'dead', 1, 1, 'KeyError: x', now(), now()"
        " FROM generate_series(1, %s) RETURNING id",
        [aggregate_id, n],
    ).fetchall()
    return sorted(r[0] for r in rows)


def test_redrive_function_keeps_an_aggregates_order_past_a_held_or_failed_event(
    db_dsn: str,
) -> None:
    # Migration 0014: an aggregate whose event stays dead (held by another transaction, or in a
    # batch that failed) keeps its later events dead too, as the CLI's redrive does.
    with psycopg.connect(db_dsn) as conn:
        held_agg = _dead_of_aggregate(conn, "a-held", 3)
        failed_agg = _dead_of_aggregate(conn, "a-failed", 2)
        free_agg = _dead_of_aggregate(conn, "a-free", 2)
        fail_updates_where(conn, f"NEW.id = {failed_agg[0]}")
        conn.commit()
    rows = psql_while_held(
        db_dsn, held_agg[1], "SELECT * FROM redrive_dead_events(batch_size => 2, actor => 'dba')"
    )
    processed, skipped, failed, _ = rows[0]
    with psycopg.connect(db_dsn) as conn:
        status = dict(conn.execute("SELECT id, status FROM outbox_event").fetchall())
    # Batches of two in id order: [h1 h2] h2 is held, so its aggregate stays dead, h1 with it
    # (the rule of redrive_plain_batch); [h3 f1] f1's update fails, the batch rolls back and
    # a-failed is held too; [f2 r1] f2 stays behind f1; [r2].
    assert [status[i] for i in held_agg] == ["dead", "dead", "dead"]
    assert [status[i] for i in failed_agg] == ["dead", "dead"]
    assert [status[i] for i in free_agg] == ["pending", "pending"]
    assert (processed, skipped, failed) == ("2", "3", "2")


def test_redrive_max_events_and_filters(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        paid = make_dead(conn, 5, event_type="order.paid")
        make_dead(conn, 2, event_type="user.created")
    rows = psql(
        db_dsn,
        "SELECT processed, skipped, failed FROM redrive_dead_events("
        "event_type => 'order.paid', max_events => 3, batch_size => 2)",
    )
    assert rows == [["3", "0", "0"]]
    repo = OutboxRepository(dsn=db_dsn)
    assert repo.count_dead_events(event_type="order.paid") == 2
    assert repo.count_dead_events(event_type="user.created") == 2
    counts = repo.redrive_dead_events(DeadEventFilter(event_type="order.paid"), actor="t")
    assert (counts.processed, counts.skipped, counts.failed) == (2, 0, 0)
    assert repo.count_dead_events() == 2
    assert len(paid) == 5


def _calls(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = %s", [name]
    ).fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def test_the_cli_calls_the_same_functions(db_dsn: str) -> None:
    # Stats: the function a DBA calls. The plain redrive by filter is the named query
    # redrive_plain_batch, run in the repository's audited batches; redrive_dead_events follows
    # the same rules (migration 0014: the aggregate order too).
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        make_dead(conn, 4, event_type="order.paid")
        # Count calls of our functions in every session of this database (the CLI's too).
        dbname = conn.info.dbname
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(
                psycopg.sql.Identifier(dbname)
            )
        )
    # A time filter: the dead-letter summary (migration 0012) answers filters on types,
    # destination and fingerprint only; the others go to the function.
    stats = run_cli("dead-events", "stats", "--by", "error", "--since", "2000-01-01", dsn=db_dsn)
    assert stats.code == 0, stats.stderr
    assert "4 dead events" in stats.stdout
    redo = run_cli("dead-events", "retry-batch", "--all-matching", "--yes", dsn=db_dsn)
    assert redo.code == 0, redo.stderr
    assert "retried 4 dead events" in redo.stdout
    deadline = time.monotonic() + 30
    with psycopg.connect(db_dsn) as conn:
        # The CLI's backends flush their statistics when they exit: poll, with a deadline.
        while True:
            seen = _calls(conn, "dead_event_stats")
            if seen >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert seen >= 1, seen


@pytest.mark.slow
@pytest.mark.pg_cron
def test_pg_cron_runs_the_redrive_function(pg_cron: Any, db_dsn: str) -> None:
    """The DBA's use: a pg_cron job whose command is the function call, run by pg_cron itself."""
    from psycopg import conninfo

    from dispatchbox.maintenance import cron

    database = str(conninfo.conninfo_to_dict(db_dsn)["dbname"])
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        paid = make_dead(conn, 3, event_type="order.paid")
        other = make_dead(conn, 2, event_type="user.created")
        where = cron.locate(conn, db_dsn)
    name = f"dispatchbox-test-redrive-{database}"
    command = (
        "SELECT * FROM redrive_dead_events(event_type => 'order.paid', max_events => 1000, "
        "actor => 'pg_cron')"
    )
    with psycopg.connect(where.dsn, autocommit=True) as cron_conn:
        cron.ensure_extension(cron_conn, create=True)
        cron_conn.execute(
            "SELECT cron.schedule_in_database(%s, '* * * * *', %s, %s)", [name, command, database]
        )
        try:
            # pg_cron starts jobs on the minute: at most 60 s, plus a margin for the run.
            deadline = time.monotonic() + 75
            runs: list[tuple[str, str]] = []
            while time.monotonic() < deadline and not runs:
                runs = [
                    (str(r[0]), str(r[1]))
                    for r in cron_conn.execute(
                        "SELECT d.status, d.return_message FROM cron.job_run_details d "
                        "JOIN cron.job j USING (jobid) WHERE j.jobname = %s "
                        "AND d.status IN ('succeeded', 'failed')",
                        [name],
                    ).fetchall()
                ]
                if not runs:
                    time.sleep(0.5)
        finally:
            cron_conn.execute("SELECT cron.unschedule(%s)", [name])
    assert runs, "pg_cron did not run the job within 75 s"
    assert runs[0] == ("succeeded", "SELECT 1"), runs[0]
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT id, status, last_redriven_by FROM outbox_event ORDER BY id"
        ).fetchall()
    assert [(i, s, b) for i, s, b in rows if i in paid] == [(i, "pending", "pg_cron") for i in paid]
    assert [s for i, s, _ in rows if i in other] == ["dead", "dead"]
