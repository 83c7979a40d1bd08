"""Archival and purge in PostgreSQL: what moves, what stays, error history, batches, locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.errors import InvalidArchiveSettings
from dispatchbox.maintenance.archiver import (
    Archiver,
    ArchiverConfig,
    purge_archive,
    run_archive,
)

Conn = psycopg.Connection[Any]
ROOT = Path(__file__).resolve().parents[2]


def add(
    conn: Conn, status: str, *, age_days: float = 0.0, n: int = 1, errors: int = 0
) -> list[int]:
    """Insert n events in a state, done_at / dead_at age_days ago, each with `errors` errors."""
    rows = conn.execute(
        """
        INSERT INTO outbox_event (
            aggregate_type, aggregate_id, event_type, payload, status, attempts, max_attempts,
            locked_by, locked_until, lease_token, last_error, last_error_at, done_at, dead_at,
            created_at
        )
        SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), %(status)s,
               CASE WHEN %(status)s = 'dead' THEN 3 ELSE 1 END, 3,
               CASE WHEN %(status)s = 'running' THEN 'w1' END,
               CASE WHEN %(status)s = 'running' THEN now() + interval '1 minute' END,
               CASE WHEN %(status)s = 'running' THEN gen_random_uuid() END,
               CASE WHEN %(status)s = 'dead' THEN 'ValueError: boom' END,
               CASE WHEN %(status)s = 'dead' THEN now() - make_interval(secs => %(age)s) END,
               CASE WHEN %(status)s = 'done' THEN now() - make_interval(secs => %(age)s) END,
               CASE WHEN %(status)s = 'dead' THEN now() - make_interval(secs => %(age)s) END,
               now() - make_interval(secs => %(age)s + 60)
          FROM generate_series(1, %(n)s) g
        RETURNING id
        """,
        {"status": status, "age": age_days * 86400, "n": n},
    ).fetchall()
    ids = [r[0] for r in rows]
    if errors:
        conn.execute(
            """
            INSERT INTO outbox_event_error (event_id, attempt, worker, started_at, finished_at,
                                            error_type, message, traceback)
            SELECT e, a, 'w1', now() - interval '2 s', now() - interval '1 s', 'ValueError',
                   'boom ' || a, 'Traceback (most recent call last): ...'
              FROM unnest(%(ids)s::bigint[]) e, generate_series(1, %(k)s) a
            """,
            {"ids": ids, "k": errors},
        )
    conn.commit()
    return ids


def ids_in(conn: Conn, table: str, where: str = "true") -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {where}").fetchall()}


def snapshot(conn: Conn, table: str) -> dict[int, dict[str, Any]]:
    """Every row of an event table as a dict, without archived_at."""
    rows = conn.execute(f"SELECT to_jsonb(t) - 'archived_at' FROM {table} t").fetchall()
    return {r[0]["id"]: r[0] for r in rows}


def test_archive_outbox_events_moves_exactly_the_old_done_rows(conn: Conn) -> None:
    old_done = add(conn, "done", age_days=10, n=25)
    new_done = add(conn, "done", age_days=6.9, n=5)
    pending = add(conn, "pending", age_days=10, n=4)
    running = add(conn, "running", age_days=10, n=3)
    dead = add(conn, "dead", age_days=10, n=2, errors=2)
    before = snapshot(conn, "outbox_event")

    moved = conn.execute("SELECT archive_outbox_events(7, 4)").fetchone()
    conn.commit()

    assert moved == (25,)
    assert ids_in(conn, "outbox_event_archive") == set(old_done)
    assert ids_in(conn, "outbox_event") == set(new_done + pending + running + dead)
    # The archived rows are the rows that left, column for column.
    archived = snapshot(conn, "outbox_event_archive")
    assert archived == {i: before[i] for i in old_done}
    # What stayed did not change at all.
    assert snapshot(conn, "outbox_event") == {i: r for i, r in before.items() if i not in old_done}
    # Dead rows' errors stay with them.
    assert conn.execute("SELECT count(*) FROM outbox_event_error").fetchone() == (4,)

    again = conn.execute("SELECT archive_outbox_events(7)").fetchone()
    assert again == (0,)


def test_dead_rows_have_their_own_retention_and_keep_their_error_history(conn: Conn) -> None:
    old_dead = add(conn, "dead", age_days=31, n=6, errors=3)
    young_dead = add(conn, "dead", age_days=10, n=2, errors=1)
    old_done = add(conn, "done", age_days=10, n=3)
    errors_before = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT id, to_jsonb(e) FROM outbox_event_error e WHERE event_id = ANY(%s)",
            [old_dead],
        ).fetchall()
    }
    assert len(errors_before) == 18

    # Done retention (7 days) does not touch 10-day-old dead rows.
    result = run_archive(conn, retention_days=7, dead_retention_days=30, batch_size=4)
    assert (result.done_moved, result.dead_moved) == (3, 6)
    assert ids_in(conn, "outbox_event_archive", "status = 'dead'") == set(old_dead)
    assert ids_in(conn, "outbox_event_archive", "status = 'done'") == set(old_done)
    assert ids_in(conn, "outbox_event") == set(young_dead)

    archived_errors = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT id, to_jsonb(e) - 'archived_at' FROM outbox_event_error_archive e"
        ).fetchall()
    }
    assert archived_errors == errors_before
    # The young dead rows keep their errors in the live table.
    assert conn.execute(
        "SELECT count(*) FROM outbox_event_error WHERE event_id = ANY(%s)", [young_dead]
    ).fetchone() == (2,)
    assert conn.execute(
        "SELECT count(*) FROM outbox_event_error WHERE event_id = ANY(%s)", [old_dead]
    ).fetchone() == (0,)
    conn.commit()

    dead_sql = conn.execute("SELECT archive_dead_events(5)").fetchone()
    assert dead_sql == (2,)
    assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (20,)


def test_dead_retention_none_leaves_dead_rows(conn: Conn) -> None:
    dead = add(conn, "dead", age_days=400, n=3, errors=1)
    add(conn, "done", age_days=400, n=2)
    result = run_archive(conn, retention_days=0, dead_retention_days=None, batch_size=10)
    assert (result.done_moved, result.dead_moved) == (2, 0)
    assert ids_in(conn, "outbox_event") == set(dead)


def test_zero_retention_archives_every_finished_row(conn: Conn) -> None:
    done = add(conn, "done", age_days=0, n=3)
    dead = add(conn, "dead", age_days=0, n=2)
    pending = add(conn, "pending", n=2)
    result = run_archive(conn, retention_days=0, dead_retention_days=0, batch_size=1)
    assert (result.done_moved, result.dead_moved) == (3, 2)
    assert ids_in(conn, "outbox_event_archive") == set(done + dead)
    assert ids_in(conn, "outbox_event") == set(pending)


def test_purge_deletes_old_archive_rows_and_their_errors(conn: Conn) -> None:
    old = add(conn, "dead", age_days=100, n=5, errors=2)
    recent = add(conn, "dead", age_days=100, n=3, errors=1)
    assert run_archive(conn, retention_days=7, dead_retention_days=30, batch_size=100).total == 8
    # Archived long ago, as if archival ran 60 days back.
    conn.execute(
        "UPDATE outbox_event_archive SET archived_at = now() - interval '60 days' "
        "WHERE id = ANY(%s)",
        [old],
    )
    conn.commit()

    assert purge_archive(conn, older_than_days=90, batch_size=2) == 0
    assert purge_archive(conn, older_than_days=30, batch_size=2) == 5
    assert ids_in(conn, "outbox_event_archive") == set(recent)
    remaining_errors = conn.execute(
        "SELECT DISTINCT event_id FROM outbox_event_error_archive"
    ).fetchall()
    assert {r[0] for r in remaining_errors} == set(recent)

    assert conn.execute("SELECT purge_outbox_archive(0, 1)").fetchone() == (3,)
    assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (0,)
    assert conn.execute("SELECT purge_outbox_archive(0)").fetchone() == (0,)


def test_invalid_settings_are_refused(conn: Conn) -> None:
    with pytest.raises(InvalidArchiveSettings):
        run_archive(conn, retention_days=-1, dead_retention_days=None, batch_size=10)
    with pytest.raises(InvalidArchiveSettings):
        run_archive(conn, retention_days=1, dead_retention_days=-3, batch_size=10)
    with pytest.raises(InvalidArchiveSettings):
        run_archive(conn, retention_days=1, dead_retention_days=None, batch_size=0)
    with pytest.raises(InvalidArchiveSettings):
        purge_archive(conn, older_than_days=-1)
    with pytest.raises(InvalidArchiveSettings):
        ArchiverConfig(retention_days=True)
    with pytest.raises(InvalidArchiveSettings):
        ArchiverConfig(pause_seconds=-0.5)
    with pytest.raises(InvalidArchiveSettings):
        run_archive(
            conn, retention_days=1, dead_retention_days=None, batch_size=10, pause_seconds=-1
        )
    for statement in (
        "SELECT archive_outbox_events(-1)",
        "SELECT archive_dead_events(NULL)",
        "SELECT purge_outbox_archive(1, 0)",
        "SELECT outbox_archive_batch('pending', now(), 10)",
        "CALL run_outbox_archival(7, 30, 100, -1)",
        "CALL run_outbox_archive_purge(7, 100, NULL)",
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(statement)
        conn.rollback()


def test_procedure_commits_every_batch_and_the_function_does_not(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add(conn, "done", age_days=10, n=10)
        add(conn, "dead", age_days=40, n=3, errors=1)
        row = conn.execute(
            "CALL run_outbox_archival(retention_days => 7, dead_retention_days => 30, "
            "batch_size => 3)"
        ).fetchone()
        assert row == (10, 3)
        # Each batch's rows carry the id of the transaction that wrote them: one per batch.
        xids = conn.execute(
            "SELECT status, count(DISTINCT xmin::text) FROM outbox_event_archive GROUP BY 1"
        ).fetchall()
        assert dict(xids) == {"done": 4, "dead": 1}

        add(conn, "done", age_days=10, n=10)
        assert conn.execute("SELECT archive_outbox_events(7, 3)").fetchone() == (10,)
        single = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM outbox_event_archive "
            "WHERE archived_at = (SELECT max(archived_at) FROM outbox_event_archive)"
        ).fetchone()
        assert single == (1,)

        conn.execute("UPDATE outbox_event_archive SET archived_at = now() - interval '2 days'")
        purged = conn.execute("CALL run_outbox_archive_purge(1, 4)").fetchone()
        assert purged == (23,)
        assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (0,)


def test_run_archive_commits_per_batch_on_autocommit_and_joins_an_open_transaction(
    db_dsn: str,
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as setup:
        add(setup, "done", age_days=10, n=9)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert (
            run_archive(conn, retention_days=7, dead_retention_days=None, batch_size=4).total == 9
        )
        xids = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM outbox_event_archive"
        ).fetchone()
        assert xids == (3,)

    with psycopg.connect(db_dsn, autocommit=True) as setup:
        add(setup, "done", age_days=10, n=5)
    # Inside the caller's transaction the batches are savepoints: nothing is visible to others
    # until the caller commits, and a rollback undoes it all.
    with psycopg.connect(db_dsn) as conn, psycopg.connect(db_dsn, autocommit=True) as other:
        conn.execute("SELECT 1")
        assert (
            run_archive(conn, retention_days=7, dead_retention_days=None, batch_size=2).total == 5
        )
        assert other.execute("SELECT count(*) FROM outbox_event").fetchone() == (5,)
        conn.rollback()
        assert other.execute("SELECT count(*) FROM outbox_event").fetchone() == (5,)
        assert (
            run_archive(conn, retention_days=7, dead_retention_days=None, batch_size=2).total == 5
        )
        # On an idle, non-autocommit connection each batch commits by itself.
        assert other.execute("SELECT count(*) FROM outbox_event").fetchone() == (0,)


def test_the_pause_between_batches_is_taken_outside_any_transaction(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as setup:
        add(setup, "done", age_days=10, n=5)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        started = time.monotonic()
        result = run_archive(
            conn, retention_days=7, dead_retention_days=None, batch_size=2, pause_seconds=0.3
        )
        elapsed = time.monotonic() - started
        assert result.done_moved == 5
        # Three non-empty batches, a pause after each; the empty batch that ends the run does
        # not wait. Each batch committed before its pause: three transactions.
        assert elapsed >= 0.9
        xids = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM outbox_event_archive"
        ).fetchone()
        assert xids == (3,)

        add(conn, "done", age_days=10, n=4)
        started = time.monotonic()
        row = conn.execute("CALL run_outbox_archival(7, NULL, 2, 0.3)").fetchone()
        assert row == (4, 0)
        assert time.monotonic() - started >= 0.6


def test_locked_rows_are_skipped_not_waited_for(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as setup:
        ids = add(setup, "done", age_days=10, n=6)
    with psycopg.connect(db_dsn) as holder, psycopg.connect(db_dsn, autocommit=True) as conn:
        holder.execute("SELECT id FROM outbox_event WHERE id = %s FOR UPDATE", [ids[0]])
        conn.execute("SET lock_timeout = '2s'")
        result = run_archive(conn, retention_days=7, dead_retention_days=None, batch_size=2)
        assert result.done_moved == 5
        holder.rollback()
        assert ids_in(conn, "outbox_event") == {ids[0]}
        assert (
            run_archive(conn, retention_days=7, dead_retention_days=None, batch_size=2).total == 1
        )


def test_two_archivers_at_once_move_every_row_once(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as setup:
        done = add(setup, "done", age_days=10, n=3000)
        dead = add(setup, "dead", age_days=40, n=500, errors=1)
    results = []
    barrier = threading.Barrier(2)

    def archive() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            barrier.wait(timeout=30)
            results.append(Archiver(ArchiverConfig(batch_size=50)).run_once(conn).archived)

    threads = [threading.Thread(target=archive) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    assert sum(r.done_moved for r in results) == 3000
    assert sum(r.dead_moved for r in results) == 500
    with psycopg.connect(db_dsn) as conn:
        assert ids_in(conn, "outbox_event_archive") == set(done + dead)
        assert conn.execute("SELECT count(*) FROM outbox_event").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone() == (500,)


# -- archival while real workers dispatch ------------------------------------------------------

WORKER_APP = "tests.archive_worker_app:dispatcher"


def _start_worker(db_dsn: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DISPATCHBOX_DSN"] = db_dsn
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatchbox",
                "worker",
                "--app",
                WORKER_APP,
                "--processes",
                "1",
                "--concurrency",
                "10",
                "--batch-size",
                "20",
                "--poll-interval",
                "0.1",
                "--backoff-base",
                "0.05",
                "--backoff-max",
                "0.1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
def test_archival_beside_two_workers_loses_and_duplicates_nothing(
    db_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as setup:
        seeded = add(setup, "done", age_days=10, n=2000) + add(
            setup, "dead", age_days=40, n=200, errors=2
        )
    published: dict[str, list[int]] = {"archive.ok": [], "archive.fail": []}
    stop_publishing = threading.Event()
    publish_error: list[BaseException] = []

    def publisher() -> None:
        # Events arrive all along, so archival always runs beside pending and running rows.
        try:
            with psycopg.connect(db_dsn) as conn:
                i = 0
                while not stop_publishing.is_set():
                    for event_type, n in (("archive.ok", 27), ("archive.fail", 3)):
                        published[event_type] += publish_many(
                            conn,
                            [
                                {
                                    "aggregate_type": "order",
                                    "aggregate_id": str(i + k),
                                    "event_type": event_type,
                                    "payload": {"k": k},
                                    "max_attempts": 2,
                                }
                                for k in range(n)
                            ],
                        )
                    conn.commit()
                    i += 30
                    time.sleep(0.02)
        except BaseException as exc:  # surfaced by the main thread
            publish_error.append(exc)

    workers = [_start_worker(db_dsn, tmp_path / f"worker{i}.log") for i in range(2)]
    thread = threading.Thread(target=publisher)
    moved_while_busy = 0
    busy_rounds = 0
    try:
        thread.start()
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            _wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM outbox_event WHERE status = 'done' AND done_at > "
                        "now() - interval '1 hour'"
                    ).fetchone()
                    != (0,)
                ),
                60,
                "the workers to complete a first event",
            )

            # Zero retention: rows are archived the moment they are done or dead, racing the
            # workers that finish them and the publisher that adds more.
            # At least 6 s of racing, and on a slow machine until the race has really happened
            # (the figures asserted below), within a hard limit.
            def raced() -> bool:
                return (
                    len(published["archive.ok"]) > 500
                    and busy_rounds > 3
                    and moved_while_busy > 500
                )

            deadline, limit = time.monotonic() + 6, time.monotonic() + 120
            while time.monotonic() < deadline or (not raced() and time.monotonic() < limit):
                outstanding = conn.execute(
                    "SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'running')"
                ).fetchone()
                result = run_archive(conn, retention_days=0, dead_retention_days=0, batch_size=50)
                if outstanding and outstanding[0] > 0:
                    busy_rounds += 1
                    moved_while_busy += result.total
                # Nothing but finished rows ever reaches the archive.
                assert conn.execute(
                    "SELECT count(*) FROM outbox_event_archive "
                    "WHERE status NOT IN ('done', 'dead') OR lease_token IS NOT NULL"
                ).fetchone() == (0,)
            stop_publishing.set()
            thread.join(30)
            assert not publish_error, publish_error
            _wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'running')"
                    ).fetchone()
                    == (0,)
                ),
                120,
                "the workers to drain the outbox",
            )
            assert all(w.poll() is None for w in workers), "a worker exited early"
            run_archive(conn, retention_days=0, dead_retention_days=0, batch_size=500)

            ok_ids, fail_ids = published["archive.ok"], published["archive.fail"]
            assert len(ok_ids) > 500 and busy_rounds > 3 and moved_while_busy > 500
            everything = set(seeded + ok_ids + fail_ids)
            assert len(everything) == len(seeded) + len(ok_ids) + len(fail_ids)
            live = ids_in(conn, "outbox_event")
            archived = ids_in(conn, "outbox_event_archive")
            # Each event in exactly one table, none missing, none extra.
            assert live == set() and archived == everything
            assert conn.execute("SELECT count(*) FROM outbox_event_archive").fetchone() == (
                len(everything),
            )
            statuses = dict(
                conn.execute(
                    "SELECT id, status FROM outbox_event_archive WHERE id = ANY(%s)",
                    [ok_ids + fail_ids],
                ).fetchall()
            )
            assert {statuses[i] for i in ok_ids} == {"done"}
            assert {statuses[i] for i in fail_ids} == {"dead"}
            # Every failed attempt's error row survived archival: 2 per failed event, 2 per
            # seeded dead event, and none left behind in the live table.
            errors = dict(
                conn.execute(
                    "SELECT event_id, count(*) FROM outbox_event_error_archive GROUP BY 1"
                ).fetchall()
            )
            assert all(errors.get(i) == 2 for i in fail_ids)
            assert sum(errors.values()) == 2 * len(fail_ids) + 2 * 200
            assert conn.execute("SELECT count(*) FROM outbox_event_error").fetchone() == (0,)
    finally:
        stop_publishing.set()
        thread.join(30)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = [w.wait(60) for w in workers]
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
