"""`db status` on an outbox of any size (dispatchbox/outbox_status.py): exact counts up to the
threshold, the same figures as the outbox_health view; planner estimates above it, marked, and
never trusted while the rows changed since the statistics could put the count under it."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.outbox_status import outbox_status, status_lines
from tests.conftest import run_cli


def _seed(conn: psycopg.Connection[Any], *, pending: int, dead: int) -> None:
    conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type) "
        "SELECT 'order', g::text, 'order.created' FROM generate_series(1, %s) g",
        [pending],
    )
    conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, attempts, "
        "last_error, dead_at) SELECT 'order', g::text, 'order.paid', 'dead', 5, "
        "'KeyError: x', now() - make_interval(mins => g) FROM generate_series(1, %s) g",
        [dead],
    )
    conn.commit()


def test_below_the_threshold_it_is_the_health_view_exactly(conn: psycopg.Connection[Any]) -> None:
    _seed(conn, pending=40, dead=7)
    conn.execute(
        "UPDATE outbox_event SET status = 'running', lease_token = gen_random_uuid(), "
        "locked_until = now() - interval '1 minute', attempts = 1 "
        "WHERE id IN (SELECT id FROM outbox_event WHERE status = 'pending' LIMIT 3)"
    )
    conn.commit()
    status = outbox_status(conn, exact_below=50)
    health = queries.fetch_one(conn, "health")
    assert health is not None
    assert status.estimated == frozenset()
    assert status.values["pending"] == health["pending"] == 37
    assert status.values["running"] == health["running"] == 3
    assert status.values["dead"] == health["dead"] == 7
    assert status.values["expired_leases"] == health["expired_leases"] == 3
    assert status.values["oldest_dead_at"] == health["oldest_dead_at"]
    # the same age, a moment apart
    assert (
        abs(status.values["oldest_pending_age_seconds"] - health["oldest_pending_age_seconds"]) < 5
    )


def test_above_the_threshold_the_planner_estimate_is_marked(
    conn: psycopg.Connection[Any],
) -> None:
    _seed(conn, pending=3000, dead=20)
    # Never analysed: no estimate, only "more than".
    status = outbox_status(conn, exact_below=100)
    assert status.estimated == {"pending"}
    assert "more than 100 (never analysed" in "\n".join(status_lines(status))

    conn.execute("ANALYZE outbox_event")
    conn.commit()
    status = outbox_status(conn, exact_below=100)
    assert status.estimated == {"pending"}
    assert 2500 <= status.values["pending"] <= 3500  # the planner's figure, not a count
    assert status.values["dead"] == 20  # below the threshold: counted
    text = "\n".join(status_lines(status))
    assert f"~{status.values['pending']} (estimated)" in text
    assert "db status --exact" in text
    exact = outbox_status(conn, exact_below=None)
    assert (exact.estimated, exact.values["pending"]) == (frozenset(), 3000)


def test_rows_changed_since_the_statistics_make_it_count(conn: psycopg.Connection[Any]) -> None:
    _seed(conn, pending=3000, dead=0)
    conn.execute("ANALYZE outbox_event")
    conn.commit()
    # A drain since ANALYZE: the statistics still say 3,000 pending, but 2,950 rows changed.
    conn.execute(
        "UPDATE outbox_event SET status = 'done', done_at = now() "
        "WHERE id IN (SELECT id FROM outbox_event ORDER BY id LIMIT 2950)"
    )
    # A backend publishes its change counters when idle, at most once a second: now.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    status = outbox_status(conn, exact_below=100)
    assert (status.estimated, status.values["pending"]) == (frozenset(), 50)


def test_db_status_prints_estimates_and_counts_with_exact(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type) "
            "SELECT 'order', g::text, 'order.created' FROM generate_series(1, 10050) g"
        )
        conn.execute("ANALYZE outbox_event")
    default = run_cli("db", "status", dsn=db_dsn)
    assert default.code == 0, default.stderr
    assert "(estimated)" in default.stdout and "db status --exact" in default.stdout
    exact = run_cli("db", "status", "--exact", dsn=db_dsn)
    assert exact.code == 0, exact.stderr
    assert "  pending                      10050\n" in exact.stdout
    assert "estimated" not in exact.stdout


def test_oldest_pending_age_by_probes_is_the_full_scan(conn: psycopg.Connection[Any]) -> None:
    """status_bounded and alert_oldest_pending_age read one entry per priority; the answer is
    the view's min over every due pending event, whatever the priorities and due times."""
    full = (
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)::double precision "
        "FROM outbox_event WHERE status = 'pending' AND next_attempt_at <= now()"
    )

    def ages() -> tuple[float, float, float]:
        # One transaction: now() is the same for the three.
        with conn.transaction():
            a = conn.execute(full).fetchone()
            b = queries.fetch_value(conn, "alert_oldest_pending_age")
            c = outbox_status(conn).values["oldest_pending_age_seconds"]
        assert a is not None
        return float(a[0]), float(b), float(c)

    assert ages() == (0.0, 0.0, 0.0)  # nothing pending
    conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, priority, "
        "next_attempt_at) VALUES ('o', '1', 'x', 9, now() + interval '1 hour')"
    )
    assert ages() == (0.0, 0.0, 0.0)  # pending, but none due
    conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, priority, "
        "next_attempt_at) VALUES ('o', '2', 'x', 2, now() - interval '30 seconds'), "
        "('o', '3', 'x', 7, now() - interval '90 seconds'), "
        "('o', '4', 'x', 1, now() - interval '10 seconds')"
    )
    full_age, alert_age, status_age = ages()
    assert full_age == alert_age == status_age
    assert 90 <= full_age < 100
