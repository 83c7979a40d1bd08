"""A snapshot held open beside the outbox is made visible: `db status`, the metrics and the
'cleanup_held' alert name it, and the outbox's dead tuples are reported."""

from __future__ import annotations

import time

import psycopg

from dispatchbox.observability.database_metrics import DatabaseCollector
from tests.conftest import run_cli
from tests.integration.test_alerts import FakeSlack, evaluator, rounds_until, slack  # noqa: F401
from tests.worker_helpers import publish, wait_until


def held(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT held_seconds FROM outbox_cleanup_horizon").fetchone()
    return float(row[0]) if row else 0.0


def test_a_held_snapshot_shows_in_status_metrics_and_fires_the_alert(
    db_dsn: str,
    slack: FakeSlack,  # noqa: F811
) -> None:
    with psycopg.connect(db_dsn, application_name="held-by-test") as holder:
        holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        holder.execute("SELECT count(*) FROM outbox_event")  # takes the snapshot
        for _ in range(3):
            publish(db_dsn, "held.test", 1)  # transactions the snapshot is behind
        wait_until(lambda: held(db_dsn) >= 2, 30, "the snapshot two seconds old")
        status = run_cli("db", "status", dsn=db_dsn)
        assert status.code == 0, status.stderr
        assert "held-by-test" in status.stdout and "idle in transaction" in status.stdout
        collector = DatabaseCollector(db_dsn, cache_seconds=0)
        try:
            gauges = {m.name: m.samples[0].value for m in collector.collect() if m.samples}
        finally:
            collector.close()
        assert gauges["dispatchbox_cleanup_held_seconds"] >= 2
        assert gauges["dispatchbox_cleanup_held_xids"] >= 3
        ev = evaluator(db_dsn, slack, dead_window=-1, dead_age=-1, cleanup_held=1)
        try:
            rounds_until(ev, lambda: len(slack.texts()) == 1)
            holder.rollback()  # the session lets go of its snapshot
            rounds_until(ev, lambda: len(slack.texts()) == 2)
        finally:
            ev.stop()
    firing, resolved = slack.texts()
    assert "held back vacuum of the outbox" in firing and "db status" in firing
    assert "resolved" in resolved


def test_dead_tuples_of_the_outbox_are_reported(db_dsn: str) -> None:
    publish(db_dsn, "held.test", 500)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM outbox_event")
        # pg_stat_user_tables is fed at the end of a transaction, and read from a snapshot of
        # the statistics taken at most once a transaction.
        deadline = time.monotonic() + 20
        dead = 0
        while time.monotonic() < deadline and dead < 500:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT outbox_dead_tuples FROM outbox_cleanup_horizon").fetchone()
            dead = int(row[0]) if row else 0
            time.sleep(0.1)
    assert dead >= 500
