"""The worker as users run it: real `dispatchbox worker` processes on a real PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.pg import PgServer, skip_outside_ci
from tests.worker_helpers import (
    FAST,
    counts,
    publish,
    records,
    start,
    wait_for_workers,
    wait_until,
)


def error_rows(dsn: str, event_id: int) -> list[tuple[int, str, str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (a, t, m)
            for a, t, m in conn.execute(
                "SELECT attempt, error_type, message FROM outbox_event_error "
                "WHERE event_id = %s ORDER BY id",
                [event_id],
            ).fetchall()
        ]


def event_row(dsn: str, event_id: int) -> dict[str, object]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM outbox_event WHERE id = %s", [event_id])
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


@pytest.mark.parametrize(
    "settings",
    [
        ("--batch-size", "200"),
        # The fastest settings the performance docs name must not cost correctness.
        ("--batch-size", "1000", "--synchronous-commit", "off"),
    ],
    ids=["default-ish", "fast"],
)
def test_four_processes_drain_20000_events_each_exactly_once(
    db_dsn: str, record_dir: Path, tmp_path: Path, settings: tuple[str, ...]
) -> None:
    run = start(db_dsn, record_dir, tmp_path, "--processes", "4", *settings, *FAST)
    try:
        wait_for_workers(run, 4)
        ids = publish(db_dsn, "test.ok", 10_000) + publish(db_dsn, "test.async_ok", 10_000)
        wait_until(lambda: counts(db_dsn)["done"] == 20_000, 180, "20,000 events done")
    finally:
        assert run.stop() == 0, run.log()
    calls = [r[1] for r in records(record_dir) if r[0] == "call"]
    assert len(calls) == 20_000, "a handler ran more or fewer times than there are events"
    assert sorted(calls) == sorted(ids)
    assert len({r[3] for r in records(record_dir)}) == 4, "all four processes took work"
    assert counts(db_dsn) == {"done": 20_000}


def test_retry_dead_and_permanent_paths(db_dsn: str, record_dir: Path, tmp_path: Path) -> None:
    (twice,) = publish(db_dsn, "test.fail_twice", 1, max_attempts=5)
    (always,) = publish(db_dsn, "test.always_fail", 1, max_attempts=3)
    (perm,) = publish(db_dsn, "test.permanent", 1, max_attempts=5)
    (orphan,) = publish(db_dsn, "test.nobody_handles_this", 1, max_attempts=2)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 1, "dead": 3}, 60, "one done and three dead")
    finally:
        assert run.stop() == 0

    row = event_row(db_dsn, twice)
    assert row["status"] == "done" and row["attempts"] == 3
    assert [(a, t) for a, t, _ in error_rows(db_dsn, twice)] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
    ]

    row = event_row(db_dsn, always)
    assert row["status"] == "dead" and row["attempts"] == 3
    assert row["dead_at"] is not None and row["last_error_at"] is not None
    assert row["last_error"] == "RuntimeError: cannot deliver order 0"
    assert [a for a, _, _ in error_rows(db_dsn, always)] == [1, 2, 3]
    calls = [r for r in records(record_dir) if r[1] == always]
    assert len(calls) == 3

    row = event_row(db_dsn, perm)
    assert row["status"] == "dead" and row["attempts"] == 1
    assert row["last_error"] == "PermanentError: payload is missing the customer"

    row = event_row(db_dsn, orphan)
    assert row["status"] == "dead" and row["attempts"] == 2
    assert "no handler registered for event type 'test.nobody_handles_this'" in str(
        row["last_error"]
    )
    log = run.log()
    assert f"event_dead id={always} event_type=test.always_fail" in log
    assert "Traceback" not in log


def test_timeouts_ours_and_the_handlers_own(db_dsn: str, record_dir: Path, tmp_path: Path) -> None:
    (own,) = publish(db_dsn, "test.own_timeout", 1, max_attempts=1)
    (slow,) = publish(db_dsn, "test.async_sleep", 1, max_attempts=1)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["dead"] == 2, 30, "both dead")
    finally:
        run.stop()
    assert event_row(db_dsn, own)["last_error"] == "TimeoutError: upstream read timed out"
    assert event_row(db_dsn, slow)["last_error"] == (
        "HandlerTimeout: handler did not finish within 0.5s"
    )


def test_an_error_message_with_a_nul_byte_is_recorded(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    (event_id,) = publish(db_dsn, "test.nul_error", 1, max_attempts=1)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["dead"] == 1, 30, "the event dead")
    finally:
        run.stop()
    assert (
        event_row(db_dsn, event_id)["last_error"] == "ValueError: bad byte \\x00 in upstream reply"
    )
    assert "worker_task_failed" not in run.log() and "flush_failed" not in run.log()


def test_payloads_never_reach_the_log(db_dsn: str, record_dir: Path, tmp_path: Path) -> None:
    publish(db_dsn, "test.always_fail", 1, max_attempts=1, payload={"card": "4111-SECRET-CARD"})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["dead"] == 1, 30, "the event dead")
    finally:
        run.stop()
    assert "event_dead" in run.log()
    assert "4111-SECRET-CARD" not in run.log()


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_handler_loses_nothing(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    (event_id,) = publish(db_dsn, "test.slow", 1, payload={"seconds": 30, "first_only": True})
    run = start(
        db_dsn,
        record_dir,
        tmp_path,
        "--processes",
        "1",
        "--lease-seconds",
        "4",
        "--handler-timeout",
        "3.5",
        "--reaper-interval",
        "0.5",
        *FAST,
    )
    try:
        wait_until(lambda: any(r[0] == "start" for r in records(record_dir)), 30, "handler start")
        (first,) = [r for r in records(record_dir) if r[0] == "start"]
        os.kill(first[3], signal.SIGKILL)
        wait_until(lambda: counts(db_dsn) == {"done": 1}, 60, "the event redelivered and done")
    finally:
        assert run.stop() == 0
    row = event_row(db_dsn, event_id)
    # The crash is a crash attempt, not an error attempt: only the delivery counts.
    assert (row["attempts"], row["crash_attempts"]) == (1, 1)
    assert [t for _, t, _ in error_rows(db_dsn, event_id)] == ["LeaseExpired"]
    starts = [r for r in records(record_dir) if r[0] == "start"]
    assert len(starts) == 2 and starts[0][3] != starts[1][3], "a new process took it over"
    assert next(r for r in records(record_dir) if r[0] == "end")[2] == 1
    assert "worker_process_died" in run.log() and "lease_expired" in run.log()


@pytest.mark.slow
def test_heartbeat_keeps_leases_of_queued_and_running_events(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    # Three 1.5 s handlers run one after another under a 2 s lease: the last waits 3 s in the
    # local queue, so only lease renewal keeps the reaper away from it.
    publish(db_dsn, "test.slow", 3, payload={"seconds": 1.5})
    run = start(
        db_dsn,
        record_dir,
        tmp_path,
        "--processes",
        "1",
        "--concurrency",
        "1",
        "--lease-seconds",
        "2",
        "--handler-timeout",
        "1.9",
        "--reaper-interval",
        "0.3",
        *FAST,
    )
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 3}, 30, "three slow events done")
    finally:
        run.stop()
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_event_error").fetchone() == (0,)
        assert conn.execute("SELECT max(attempts) FROM outbox_event").fetchone() == (1,)


def test_a_process_holds_at_most_one_and_a_half_batches(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    # Batch 10, two threads: a full batch is claimed whenever fewer than 5 wait, so at most
    # 4 + 10 wait and 2 run. More leased rows than that would be a process hoarding work.
    # A handled event stays `running` in the table until its completion is flushed, a few
    # milliseconds later (more on a loaded machine), so the count leaves out rows whose handler
    # has already ended. The table is read before the records: an event that ends in between
    # is left out too, which can only lower the count, never make a correct process fail.
    publish(db_dsn, "test.slow", 40, payload={"seconds": 0.1})
    run = start(
        db_dsn,
        record_dir,
        tmp_path,
        "--processes",
        "1",
        "--concurrency",
        "2",
        "--batch-size",
        "10",
        *FAST,
    )
    held: list[int] = []
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while counts(db_dsn).get("done") != 40 and time.monotonic() < deadline:
                leased = {
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM outbox_event WHERE status = 'running'"
                    ).fetchall()
                }
                handled = {r[1] for r in records(record_dir) if r[0] == "end"}
                held.append(len(leased - handled))
                time.sleep(0.02)
    finally:
        run.stop()
    assert counts(db_dsn) == {"done": 40}
    assert max(held) <= 16, held
    assert max(held) > 2, held  # sampled while work was held, not only at the end


@pytest.mark.slow
@pytest.mark.parametrize("event_type", ["test.slow", "test.async_slow"])
def test_sigterm_finishes_in_flight_and_gives_back_the_rest(
    db_dsn: str, record_dir: Path, tmp_path: Path, event_type: str
) -> None:
    publish(db_dsn, event_type, 40, payload={"seconds": 1.0})
    run = start(
        db_dsn,
        record_dir,
        tmp_path,
        "--processes",
        "1",
        "--concurrency",
        "4",
        "--batch-size",
        "20",
        *FAST,
    )
    wait_until(lambda: len(records(record_dir)) >= 4, 30, "four handlers started")
    started = time.monotonic()
    assert run.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    recs = records(record_dir)
    started_ids = {r[1] for r in recs if r[0] == "start"}
    ended_ids = {r[1] for r in recs if r[0] == "end"}
    assert started_ids == ended_ids, "every started handler was allowed to finish"
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT id, status, attempts FROM outbox_event").fetchall()
    done = {i for i, s, _ in rows if s == "done"}
    assert done == ended_ids
    assert all(s == "pending" and a == 0 for i, s, a in rows if i not in done), rows
    assert "released_unstarted" in run.log()


@pytest.mark.parametrize("event_type", ["test.slow", "test.async_slow"])
def test_a_handler_still_running_when_the_grace_period_ends_costs_no_attempt(
    db_dsn: str, record_dir: Path, tmp_path: Path, event_type: str
) -> None:
    (event_id,) = publish(db_dsn, event_type, 1, payload={"seconds": 60})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", "--grace-period", "0.5", *FAST)
    wait_until(lambda: len(records(record_dir)) == 1, 30, "the handler started")
    started = time.monotonic()
    assert run.stop(signal.SIGTERM) == 0, run.log()
    assert time.monotonic() - started < 20
    row = event_row(db_dsn, event_id)
    # A graceful stop (a deploy) gives the event back as it found it: no attempt, no crash.
    assert (row["status"], row["attempts"], row["crash_attempts"], row["locked_by"]) == (
        "pending",
        0,
        0,
        None,
    ), run.log()
    assert error_rows(db_dsn, event_id) == []
    assert "released_running" in run.log()
    assert [r[0] for r in records(record_dir)] == ["start"]


def idle_on_listen(dsn: str) -> bool:
    """The worker's connections are all idle, its listener among them: nothing left to claim,
    it waits on the notification (or its poll)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state <> 'idle'), "
            "       count(*) FILTER (WHERE application_name = 'dispatchbox-worker-listen') "
            "  FROM pg_stat_activity WHERE application_name LIKE 'dispatchbox-worker-%'"
        ).fetchone()
    return row is not None and row[0] == 0 and row[1] >= 1


def test_notify_wakes_an_idle_worker_well_before_the_poll(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", "--poll-interval", "30")
    try:
        publish(db_dsn, "test.ok", 1)  # the first claim happens at start-up anyway
        wait_until(lambda: counts(db_dsn)["done"] == 1, 30, "first event")
        wait_until(lambda: idle_on_listen(db_dsn), 30, "the worker idle, waiting on LISTEN")
        latencies = []
        for _ in range(5):
            n = counts(db_dsn)["done"] + 1
            before = time.time()
            publish(db_dsn, "test.ok", 1)
            wait_until(lambda n=n: counts(db_dsn)["done"] >= n, 10, "a notified delivery", 0.01)
            latest = max(r[4] for r in records(record_dir))
            latencies.append(latest - before)
    finally:
        run.stop()
    assert max(latencies) < 2.0, latencies


@pytest.mark.slow
def test_postgresql_restart_during_a_run_ends_with_all_events_done(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    if pg_server.cluster is None:
        skip_outside_ci("needs the test session's own cluster to restart it")
    ids = publish(db_dsn, "test.slow", 3000, payload={"seconds": 0.002})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 300, 60, "some progress")
        pg_server.cluster.stop_server("fast")
        # Start it again once a worker process has noticed it gone (it logs that once).
        wait_until(lambda: "database_unreachable" in run.log(), 60, "a process noticing")
        pg_server.cluster.start_server()
        wait_until(lambda: counts(db_dsn) == {"done": 3000}, 120, "all 3000 done after restart")
    finally:
        assert run.stop() == 0
    handled = {r[1] for r in records(record_dir) if r[0] == "end"}
    assert handled == set(ids)
    # One line when a process loses the database and one when it has it back, not one per task
    # or per retry: each process's lines alternate. (A process may see the server go away twice
    # while it starts up again, so the number of outages is not fixed; their shape is.)
    by_worker: dict[str, list[str]] = {}
    for kind, worker in re.findall(
        r"(database_unreachable|database_reachable) worker=(\S+)", run.log()
    ):
        by_worker.setdefault(worker, []).append(kind)
    assert by_worker, "no process noticed the restart"
    for worker, kinds in by_worker.items():
        expected = ["database_unreachable", "database_reachable"] * (len(kinds) // 2)
        assert kinds and kinds == expected, (worker, kinds)


def test_bad_configuration_is_refused_up_front(db_dsn: str, empty_db_dsn: str) -> None:
    lease = run_cli(
        "worker",
        "--app",
        "tests.worker_app:dispatcher",
        "--lease-seconds",
        "10",
        "--handler-timeout",
        "10",
        dsn=db_dsn,
    )
    assert lease.code == 2 and "--handler-timeout (10s) must be shorter" in lease.stderr
    started = time.monotonic()
    missing = run_cli(
        "worker", "--app", "tests.no_such_module:dispatcher", "--processes", "3", dsn=db_dsn
    )
    assert missing.code == 2 and "cannot import app module" in missing.stderr
    # The processes forked before the check end at once (under a second here; each one that
    # kept a gate open would hold the command for a 5 s join).
    assert time.monotonic() - started < 10
    not_dispatcher = run_cli("worker", "--app", "tests.worker_app:record", dsn=db_dsn)
    assert not_dispatcher.code == 2 and "not a dispatchbox.Dispatcher" in not_dispatcher.stderr
    unmigrated = run_cli("worker", "--app", "tests.worker_app:dispatcher", dsn=empty_db_dsn)
    assert unmigrated.code == 1 and "missing migrations" in unmigrated.stderr
    for result in (lease, missing, not_dispatcher, unmigrated):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
