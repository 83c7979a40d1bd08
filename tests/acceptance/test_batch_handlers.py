"""Batch handlers in real `dispatchbox worker` processes on a real PostgreSQL."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from tests.worker_helpers import (
    FAST,
    counts,
    publish,
    records,
    start,
    wait_for_workers,
    wait_until,
)


def rows(dsn: str, ids: list[int]) -> dict[int, tuple[str, int, str | None]]:
    with psycopg.connect(dsn) as conn:
        return {
            i: (status, attempts, error)
            for i, status, attempts, error in conn.execute(
                "SELECT id, status, attempts, last_error FROM outbox_event WHERE id = ANY(%s)",
                [ids],
            ).fetchall()
        }


def error_types(dsn: str, event_id: int) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (a, t)
            for a, t in conn.execute(
                "SELECT attempt, error_type FROM outbox_event_error WHERE event_id = %s "
                "ORDER BY id",
                [event_id],
            ).fetchall()
        ]


def test_two_processes_deliver_every_event_of_sync_and_async_batches_once(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", "--batch-size", "500", *FAST)
    try:
        wait_for_workers(run, 2)
        ids = publish(db_dsn, "test.batch_ok", 3000) + publish(db_dsn, "test.async_batch_ok", 3000)
        wait_until(lambda: counts(db_dsn)["done"] == 6000, 120, "6,000 events done")
    finally:
        assert run.stop() == 0, run.log()
    recs = records(record_dir)
    calls = [r[1] for r in recs if r[0] == "call"]
    assert sorted(calls) == sorted(ids), "each event delivered exactly once"
    sizes = [r[1] for r in recs if r[0] == "batch"]
    assert sum(sizes) == 6000 and max(sizes) == 50 and min(sizes) >= 1
    assert len({r[3] for r in recs}) == 2, "both processes took work"
    assert counts(db_dsn) == {"done": 6000}


def test_batch_failure_fails_the_events_it_names_and_completes_the_rest(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ok = publish(db_dsn, "test.batch_mixed", 20, max_attempts=2)
    failing = publish(db_dsn, "test.batch_mixed", 5, payload={"fail": True}, max_attempts=2)
    permanent = publish(db_dsn, "test.batch_mixed", 5, payload={"permanent": True})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 20, "dead": 10}, 60, "20 done, 10 dead")
    finally:
        assert run.stop() == 0
    state = rows(db_dsn, ok + failing + permanent)
    assert all(state[i] == ("done", 1, None) for i in ok), state
    for i in failing:
        status, attempts, error = state[i]
        assert (status, attempts) == ("dead", 2) and error is not None
        assert error.startswith("RuntimeError: broker refused order")
        assert error_types(db_dsn, i) == [(1, "RuntimeError"), (2, "RuntimeError")]
    for i in permanent:
        assert state[i] == ("dead", 1, "PermanentError: no route for this order")
    calls = [r[1] for r in records(record_dir) if r[0] == "call"]
    assert sorted(calls) == sorted(ok + failing + failing + permanent)


def test_any_other_exception_fails_the_whole_batch_and_it_is_retried(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ids = publish(db_dsn, "test.batch_fail_first", 30, max_attempts=5)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", "--batch-size", "100", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 30}, 60, "30 done")
    finally:
        assert run.stop() == 0
    state = rows(db_dsn, ids)
    assert all(state[i][:2] == ("done", 2) for i in ids), state
    assert all(error_types(db_dsn, i) == [(1, "ConnectionError")] for i in ids)
    with psycopg.connect(db_dsn) as conn:
        tracebacks = [
            t
            for (t,) in conn.execute(
                "SELECT traceback FROM outbox_event_error WHERE event_id = ANY(%s)", [ids]
            ).fetchall()
        ]
    assert len(tracebacks) == 30
    assert all(
        "in batch_fail_first" in t and "ConnectionError: broker is down" in t for t in tracebacks
    )


def test_a_permanent_error_dead_letters_the_whole_batch_and_unknown_ids_are_ignored(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    dead = publish(db_dsn, "test.batch_permanent", 10, max_attempts=5)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"dead": 10}, 30, "10 dead")
    finally:
        assert run.stop() == 0
    state = rows(db_dsn, dead)
    assert all(
        state[i] == ("dead", 1, "PermanentError: the broker rejects this schema") for i in dead
    )

    done = publish(db_dsn, "test.batch_permanent", 10, payload={"unknown": True})
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["done"] == 10, 30, "10 done")
    finally:
        assert run.stop() == 0
    assert all(status == ("done", 1, None) for status in rows(db_dsn, done).values())
    assert "batch_failure_unknown_ids" in run.log() and "ids=[-1]" in run.log()


def test_a_batch_past_its_timeout_fails_every_event_in_it(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    sync_ids = publish(db_dsn, "test.batch_slow", 10, max_attempts=1)
    async_ids = publish(db_dsn, "test.async_batch_slow", 10, max_attempts=1)
    run = start(db_dsn, record_dir, tmp_path, "--processes", "1", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"dead": 20}, 30, "all 20 dead")
    finally:
        run.stop()
    state = rows(db_dsn, sync_ids + async_ids)
    expected = ("dead", 1, "HandlerTimeout: handler did not finish within 0.5s")
    assert all(state[i] == expected for i in sync_ids + async_ids), state


@pytest.mark.slow
def test_sigterm_lets_running_batches_finish_and_gives_back_the_rest(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    publish(db_dsn, "test.batch_sleep", 40, payload={"seconds": 1.0})
    run = start(
        db_dsn,
        record_dir,
        tmp_path,
        "--processes",
        "1",
        "--concurrency",
        "2",
        "--batch-size",
        "20",
        *FAST,
    )
    wait_until(lambda: len(records(record_dir)) >= 10, 30, "two batches started")
    assert run.stop(signal.SIGTERM) == 0
    recs = records(record_dir)
    started = {r[1] for r in recs if r[0] == "start"}
    ended = {r[1] for r in recs if r[0] == "end"}
    assert started == ended, "every started batch was allowed to finish"
    with psycopg.connect(db_dsn) as conn:
        state = conn.execute("SELECT id, status, attempts FROM outbox_event").fetchall()
    assert {i for i, s, _ in state if s == "done"} == ended
    assert all(s == "pending" and a == 0 for i, s, a in state if i not in ended), state
    assert "released_unstarted" in run.log()
