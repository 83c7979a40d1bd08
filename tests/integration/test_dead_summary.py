"""The dead-letter summary of migration 0012 (outbox_dead_summary, outbox_dead_hourly) equals the
exact reads over outbox_event while real worker processes kill events and an operator redrives,
purges and archives them at the same time; and every read that uses it gives what the exact
query gives."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg

from dispatchbox import OutboxRepository
from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter
from dispatchbox.fingerprint import fingerprint
from tests.integration.test_repository import make_dead
from tests.worker_helpers import FAST, counts, publish, start, wait_for_workers, wait_until

# The summary's rows as the outbox says they should be: every dead event, grouped.
EXACT_GROUPS = """
SELECT aggregate_type, event_type, destination,
       coalesce(outbox_error_fingerprint(last_error), 'none') AS fingerprint,
       count(*) AS dead_count, min(dead_at) AS first_dead_at, max(dead_at) AS last_dead_at
  FROM outbox_event WHERE status = 'dead'
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4 NULLS FIRST
"""
SUMMARY_GROUPS = """
SELECT aggregate_type, event_type, destination, fingerprint, dead_count, first_dead_at,
       last_dead_at
  FROM {}
 ORDER BY 1, 2, 3, 4 NULLS FIRST
"""
EXACT_HOURS = """
SELECT aggregate_type, event_type, destination,
       coalesce(outbox_error_fingerprint(last_error), 'none') AS fingerprint,
       outbox_dead_hour(dead_at) AS hour, count(*) AS dead_count
  FROM outbox_event WHERE status = 'dead' AND dead_at IS NOT NULL
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY 1, 2, 3, 4 NULLS FIRST, 5
"""
SUMMARY_HOURS = """
SELECT aggregate_type, event_type, destination, fingerprint, hour, dead_count
  FROM {}
 ORDER BY 1, 2, 3, 4 NULLS FIRST, 5
"""


def _filters(conn: psycopg.Connection[Any]) -> list[DeadEventFilter]:
    found = [DeadEventFilter()]
    rows = conn.execute(
        "SELECT DISTINCT event_type, aggregate_type, destination, fingerprint "
        "FROM outbox_dead_groups"
    ).fetchall()
    for event_type, aggregate_type, destination, fp in rows[:4]:
        found += [
            DeadEventFilter(event_type=event_type),
            DeadEventFilter(aggregate_type=aggregate_type, destination=destination),
            DeadEventFilter(error_fingerprint=fp if fp != "none" else None, event_type=event_type),
        ]
    found.append(DeadEventFilter(destination="nowhere"))
    return found


def _same_reads(conn: psycopg.Connection[Any], flt: DeadEventFilter) -> None:
    """Every summary read against its exact twin, in the caller's snapshot."""
    params = flt.params()
    assert queries.fetch_value(conn, "dead_count_summary", params) == queries.fetch_value(
        conn, "dead_count", params
    ), flt
    assert queries.fetch_one(conn, "dead_stats_totals_summary", params) == queries.fetch_one(
        conn, "dead_stats_totals", params
    ), flt
    for by in ("event_type", "aggregate_type", "destination"):
        assert queries.fetch_all(
            conn, "dead_stats_grouped_summary", {**params, "by": by}
        ) == queries.fetch_all(conn, f"dead_stats_by_{by}", params), (flt, by)
    assert queries.fetch_all(conn, "dead_stats_by_error_summary", params) == queries.fetch_all(
        conn, "dead_stats_by_error", params
    ), flt

    def key(r: dict[str, Any]) -> tuple[str, str]:
        return (r["fingerprint"], r["target"])

    assert sorted(queries.fetch_all(conn, "console_error_groups_summary", params), key=key) == (
        sorted(queries.fetch_all(conn, "console_error_groups", params), key=key)
    ), flt


def assert_summary_exact(dsn: str, *, folded: bool = False) -> None:
    """The views (summaries plus deltas) equal the outbox in one snapshot; ``folded``: fold every
    delta first and compare the summary tables themselves."""
    if folded:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT outbox_dead_summary_fold()")
            conn.commit()
            assert conn.execute("SELECT count(*) FROM outbox_dead_delta").fetchone() == (0,)
    groups = "outbox_dead_summary" if folded else "outbox_dead_groups"
    hours = "outbox_dead_hourly" if folded else "outbox_dead_hours"
    with psycopg.connect(dsn) as conn, conn.transaction():
        queries.execute(conn, "read_snapshot")
        exact = conn.execute(EXACT_GROUPS).fetchall()
        assert conn.execute(SUMMARY_GROUPS.format(groups)).fetchall() == exact
        exact = conn.execute(EXACT_HOURS).fetchall()
        assert conn.execute(SUMMARY_HOURS.format(hours)).fetchall() == exact
        for flt in _filters(conn):
            _same_reads(conn, flt)


def test_summary_follows_death_redrive_edit_purge_archive_and_truncate(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        make_dead(conn, 30, error="KeyError: 'order_{i}'")
        ids = make_dead(conn, 20, event_type="mail.sent", error="OSError: host {i} down")
        conn.execute("UPDATE outbox_event SET destination = 'smtp' WHERE id = ANY(%s)", [ids[:10]])
        conn.execute(
            "UPDATE outbox_event SET last_error = 'ValueError: bad', dead_at = now() - "
            "interval '5 hours' WHERE id = ANY(%s)",
            [ids[10:15]],
        )
        conn.commit()
    assert_summary_exact(db_dsn)
    repo = OutboxRepository(db_dsn)
    assert repo.retry_dead_events(DeadEventFilter(event_type="mail.sent"), 7) == 7
    assert_summary_exact(db_dsn)
    assert repo.cleanup_old_dead_events(0, filter=DeadEventFilter(destination="smtp")) > 0
    assert_summary_exact(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("DELETE FROM outbox_event WHERE status = 'dead' AND id % 4 = 0")
        conn.commit()
    assert_summary_exact(db_dsn)
    assert_summary_exact(db_dsn, folded=True)
    stats = repo.dead_event_stats(filter=DeadEventFilter(error_fingerprint=fingerprint("x")))
    assert stats.total == 0
    with psycopg.connect(db_dsn) as conn:
        conn.execute("TRUNCATE outbox_event CASCADE")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM outbox_dead_summary").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox_dead_hourly").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox_dead_delta").fetchone() == (0,)


def test_summary_stays_exact_under_concurrent_workers_and_operators(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    """Two worker processes kill events (always_fail after 2 attempts, permanent at once;
    fail_twice recovers) while this process redrives, purges and archives dead ones."""
    failing = publish(db_dsn, "test.always_fail", 300, max_attempts=2)
    permanent = publish(db_dsn, "test.permanent", 300)
    publish(db_dsn, "test.fail_twice", 100, max_attempts=5)
    with psycopg.connect(db_dsn) as conn:
        # Destinations spread over the groups; the test app's handlers name none of their own.
        conn.execute(
            "UPDATE outbox_event SET destination = (ARRAY['erp', 'smtp', NULL])[1 + id %% 3] "
            "WHERE id = ANY(%s)",
            [failing + permanent],
        )
        conn.commit()
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", "--batch-size", "10", *FAST)
    repo = OutboxRepository(db_dsn)
    stop = threading.Event()
    errors: list[BaseException] = []

    def operator() -> None:
        # Each action in its own transaction, racing the workers' deaths.
        try:
            while not stop.is_set():
                repo.retry_dead_events(DeadEventFilter(event_type="test.permanent"), 15)
                with psycopg.connect(db_dsn) as conn:
                    conn.execute(
                        "DELETE FROM outbox_event WHERE id IN (SELECT id FROM outbox_event "
                        "WHERE status = 'dead' AND id % 11 = 0 LIMIT 5)"
                    )
                repo.cleanup_old_dead_events(0, filter=DeadEventFilter(destination="erp"))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=operator)
    try:
        wait_for_workers(run, 2)
        thread.start()
        for _ in range(5):
            assert_summary_exact(db_dsn)
        stop.set()
        thread.join(60)
        assert not errors, errors
        wait_until(
            lambda: counts(db_dsn)["pending"] + counts(db_dsn)["running"] == 0,
            120,
            "every event done or dead",
        )
    finally:
        stop.set()
        thread.join(60)
        assert run.stop() == 0, run.log()
    assert counts(db_dsn)["dead"] > 0
    assert_summary_exact(db_dsn)
    assert_summary_exact(db_dsn, folded=True)
