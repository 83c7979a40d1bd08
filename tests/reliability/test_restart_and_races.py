"""A full PostgreSQL restart under running workers, and the operators' set-based work (redrive,
archival) racing the workers on the same table. Real processes, the suite's own cluster."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.pg import PgServer, skip_outside_ci
from tests.reliability.test_faults import assert_each_once_or_explained, executions
from tests.worker_helpers import FAST, counts, publish, records, start, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def test_a_full_postgresql_restart_mid_run(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    if pg_server.cluster is None:
        skip_outside_ci("restarting PostgreSQL needs the suite's own cluster")
    ids = publish(db_dsn, "test.chaos", 6000, payload={"seconds": 0.002})
    run = start(
        db_dsn, record_dir, tmp_path, "--processes", "2", "--lease-seconds", "3",
        "--handler-timeout", "2", "--reaper-interval", "0.5", *FAST,
    )  # fmt: skip
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 500, 60, "some progress")
        went_down = time.time()
        pg_server.cluster.stop_server("fast")
        pg_server.cluster.start_server()
        came_back = time.time()
        back_done = counts(db_dsn)["done"]
        wait_until(lambda: counts(db_dsn)["done"] > back_done, 60, "progress after the restart")
        recovered = time.time() - came_back
        wait_until(lambda: counts(db_dsn) == {"done": 6000}, 120, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    runs = executions(record_dir)
    assert set(runs) == set(ids), "an event was never handled"
    # A completion in flight when the server went down is lost with its transaction: the event
    # runs again once its lease expires. Only an execution that ended before the server was back
    # may have been repeated, and executions never overlap.
    for event_id, execs in runs.items():
        for (_, _, end), (_, next_start, _) in itertools.pairwise(execs):
            assert end is not None and end <= came_back, f"event {event_id} repeated unexplained"
            assert end <= next_start
    repeats = sum(len(e) - 1 for e in runs.values())
    log = run.log()
    assert "database_unreachable" in log and "database_reachable" in log
    assert "worker_process_died" not in log, "recovered without a restart"
    print(f"restart took {came_back - went_down:.1f}s, progress {recovered:.1f}s after it, "
          f"repeats={repeats}")  # fmt: skip


def _dead(dsn: str, n: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, "
            "attempts, max_attempts, last_error, last_error_at, dead_at) "
            "SELECT 'order', g::text, 'test.chaos', '{\"seconds\": 0.001}', 'dead', 5, 5, "
            "'KeyError: x', now(), now() FROM generate_series(1, %s) g",
            [n],
        )


def test_a_redrive_racing_the_workers(db_dsn: str, record_dir: Path, tmp_path: Path) -> None:
    _dead(db_dsn, 10_000)
    live = publish(db_dsn, "test.chaos", 10_000, payload={"seconds": 0.001})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", "--concurrency", "4", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 500, 60, "the workers under way")
        # Paced, so that the workers claim redriven events while the redrive still runs.
        redrive = run_cli("dead-events", "retry-batch", "--all-matching", "--event-type",
                          "test.chaos", "--rate", "2000", "--yes", dsn=db_dsn)  # fmt: skip
        assert redrive.code == 0, redrive.stderr
        wait_until(lambda: counts(db_dsn) == {"done": 20_000}, 180, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    with psycopg.connect(db_dsn) as conn:
        redriven = [r[0] for r in conn.execute(
            "SELECT id FROM outbox_event WHERE redrive_count = 1").fetchall()]  # fmt: skip
        twice = conn.execute("SELECT count(*) FROM outbox_event WHERE redrive_count > 1").fetchone()
        # The race happened: workers finished redriven events before the redrive had finished.
        raced = conn.execute(
            "SELECT count(*) FROM outbox_event e, outbox_dead_letter_audit a "
            "WHERE a.action = 'retry_filter' AND e.redrive_count = 1 AND e.done_at < a.finished_at"
        ).fetchone()
    assert len(redriven) == 10_000 and twice == (0,)
    assert raced is not None and raced[0] > 1000, raced
    assert_each_once_or_explained(record_dir, live + redriven, {})
    assert all(len(e) == 1 for e in executions(record_dir).values()), "each ran exactly once"


def test_archival_racing_the_workers(db_dsn: str, record_dir: Path, tmp_path: Path) -> None:
    ids = publish(db_dsn, "test.chaos", 20_000, payload={"seconds": 0.002})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", "--concurrency", "2", *FAST)
    rounds_beside_workers = 0
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 200, 60, "the workers under way")
        # What pg_cron would run, in small batches and often: done rows leave the table while
        # the workers claim and complete the rows beside them.
        with psycopg.connect(db_dsn, autocommit=True) as archiver:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                busy = counts(db_dsn)
                archiver.execute("SELECT archive_outbox_events(0, 500)")
                if busy["pending"] or busy["running"]:
                    rounds_beside_workers += 1
                elif not busy:
                    break  # the outbox is empty: everything archived
                time.sleep(0.05)
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    with psycopg.connect(db_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM outbox_event").fetchone()
        moved = conn.execute(
            "SELECT status, count(*), count(DISTINCT id) FROM outbox_event_archive GROUP BY 1"
        ).fetchall()
    assert rounds_beside_workers >= 20, "archival hardly ran beside the workers"
    assert left == (0,) and moved == [("done", 20_000, 20_000)], (left, moved)
    assert_each_once_or_explained(record_dir, ids, {})
    assert all(len(e) == 1 for e in executions(record_dir).values())
    assert len(records(record_dir)) == 40_000  # a start and an end line each
