"""The partitioned outbox (migration 0013, opt-in): conversion of a populated outbox and
retirement of partitions, with real worker processes and a real publisher running throughout.
Nothing may be lost or run twice, idempotency keys stay unique across partitions, and the
longest lock wait a worker backend shows is measured and bounded."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import publish, publish_many
from dispatchbox.errors import PartitionError
from dispatchbox.maintenance import archiver, partitioner
from dispatchbox.outbox_status import outbox_status
from tests.conftest import run_cli
from tests.partition_probe import LockWaitSampler, PublishProbe
from tests.worker_helpers import FAST, counts, records, start, wait_for_workers, wait_until

# A worker statement queued behind a lock step waits at most the lock timeout per try (plus the
# step itself); on a loaded 2-core machine allow a wide margin, far below a lease or a poll.
LOCK_TIMEOUT_MS = 200
LONGEST_WORKER_WAIT = 1.0
LONGEST_PUBLISH = 2.0


def _events(event_type: str, n: int, *, key_prefix: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "aggregate_type": "order",
            "aggregate_id": str(i),
            "event_type": event_type,
            "payload": {"i": i},
            **({"idempotency_key": f"{key_prefix}-{i}"} if key_prefix else {}),
        }
        for i in range(n)
    ]


def _publish(dsn: str, events: list[dict[str, Any]]) -> list[int]:
    with psycopg.connect(dsn) as conn:
        ids = publish_many(conn, events)
        conn.commit()
    return ids


def _drained(dsn: str) -> bool:
    c = counts(dsn)
    return c["pending"] == 0 and c["running"] == 0


def _convert(dsn: str, **kwargs: Any) -> partitioner.ConversionReport:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return partitioner.convert(conn, lock_timeout_ms=LOCK_TIMEOUT_MS, **kwargs)


def _calls(record_dir: Path) -> Counter[int]:
    return Counter(event_id for kind, event_id, *_ in records(record_dir) if kind == "call")


def test_conversion_with_workers_running_loses_nothing_and_runs_nothing_twice(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    before = _publish(db_dsn, _events("test.ok", 3000))
    keyed = _publish(db_dsn, _events("test.ok", 200, key_prefix="pre"))
    dead = _publish(db_dsn, _events("test.permanent", 5))
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_for_workers(run, 2)
        probe = PublishProbe(db_dsn, "test.ok")
        sampler = LockWaitSampler(db_dsn)
        probe.start()
        sampler.start()
        wait_until(lambda: len(probe.ids) >= 20, 30, "the probe publishing")
        report = _convert(db_dsn, partition_size=5000)
        wait_until(lambda: any(i >= report.first_bound for i in probe.ids), 30, "new ids")
        after = _publish(db_dsn, _events("test.ok", 2000))
        probe.stop()
        sampler.stop()
        wait_until(lambda: _drained(db_dsn), 120, "the outbox drained")
    finally:
        assert run.stop() == 0, run.log()

    print(
        f"\nconversion of {len(before) + len(keyed) + len(dead)} events with 2 worker processes: "
        f"swap {report.swap_seconds * 1000:.1f} ms ({report.swap_attempts} tries), longest "
        f"worker lock wait {sampler.longest * 1000:.1f} ms ({sampler.samples} samples), "
        f"longest publish {probe.longest * 1000:.1f} ms"
    )
    calls = _calls(record_dir)
    everything = set(before) | set(keyed) | set(dead) | set(probe.ids) | set(after)
    assert set(calls) == everything
    assert max(calls.values()) == 1
    assert counts(db_dsn) == Counter({"done": len(everything) - len(dead), "dead": len(dead)})
    assert min(after) >= report.first_bound
    assert sampler.longest < LONGEST_WORKER_WAIT
    assert probe.longest < LONGEST_PUBLISH

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert partitioner.status(conn)["partitioned"]
        names = [p["partition_name"] for p in partitioner.partitions(conn)]
        assert names[0] == "outbox_event_p0"
        # Keys from before the conversion and from during it still name their first event.
        assert publish(conn, **_events("test.ok", 1, key_prefix="pre")[0]) == keyed[0]
        # Every key the probe published before, during and after the swap names its event.
        again = publish_many(
            conn,
            [
                {
                    "aggregate_type": "probe",
                    "aggregate_id": "0",
                    "event_type": "test.ok",
                    "payload": {},
                    "idempotency_key": key,
                }
                for key in probe.keys
            ],
        )
        assert again == probe.ids
        n = conn.execute(
            "SELECT count(*) FROM outbox_event WHERE idempotency_key = %s", (probe.keys[-1],)
        ).fetchone()
        assert n == (1,)
        # The dead events kept their error history across the swap (foreign key re-pointed).
        errors = conn.execute(
            "SELECT count(*) FROM outbox_event_error WHERE event_id = ANY(%s)", (dead,)
        ).fetchone()
        assert errors == (len(dead),)
        unvalidated = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'outbox_event'::regclass "
            "AND NOT convalidated"
        ).fetchone()
        assert unvalidated == (0,)


def _backdate_done(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE outbox_event SET done_at = done_at - interval '10 days' WHERE status = 'done'"
        )


def test_retirement_archives_and_drops_only_finished_partitions(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    old = _publish(db_dsn, _events("test.ok", 10))
    report = _convert(db_dsn, partition_size=1000)
    # Partition A: done events, some after failed attempts (error rows), some keyed.
    part_a = _publish(db_dsn, _events("test.fail_twice", 20))
    part_a += _publish(db_dsn, _events("test.ok", 50, key_prefix="a"))
    part_a += _publish(db_dsn, _events("test.ok", 1000 - len(part_a)))
    # Partition B: one dead event keeps it.
    part_b = _publish(db_dsn, _events("test.permanent", 1))
    part_b += _publish(db_dsn, _events("test.ok", 999))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # What the pg_cron job does every few minutes: partitions ahead of the ids.
        assert partitioner.maintain(conn, retention_days=7).created >= 1
    assert min(part_a) == report.first_bound and max(part_b) == report.first_bound + 1999
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_for_workers(run, 2)
        wait_until(lambda: _drained(db_dsn), 120, "partitions A and B drained")
        _backdate_done(db_dsn)
        probe = PublishProbe(db_dsn, "test.ok")
        sampler = LockWaitSampler(db_dsn)
        probe.start()
        sampler.start()
        wait_until(lambda: len(probe.ids) >= 20, 30, "the probe publishing")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            result = partitioner.maintain(conn, retention_days=7, lock_timeout_ms=LOCK_TIMEOUT_MS)
            names = [p["partition_name"] for p in partitioner.partitions(conn)]
        probe.stop()
        sampler.stop()
        wait_until(lambda: _drained(db_dsn), 120, "the probe's events done")
    finally:
        assert run.stop() == 0, run.log()

    print(
        f"\nretired {result.retired} partitions with 2 worker processes: longest worker lock "
        f"wait {sampler.longest * 1000:.1f} ms ({sampler.samples} samples), longest publish "
        f"{probe.longest * 1000:.1f} ms"
    )
    assert result.retired == 2
    assert "outbox_event_p0" not in names
    assert f"outbox_event_p{report.first_bound}" not in names
    assert names[0] == f"outbox_event_p{report.first_bound + 1000}"
    assert sampler.longest < LONGEST_WORKER_WAIT
    assert probe.longest < LONGEST_PUBLISH
    calls = _calls(record_dir)
    assert max(n for i, n in calls.items() if i not in part_a[:20]) == 1
    assert set(calls) == set(old) | set(part_a) | set(part_b) | set(probe.ids)

    with psycopg.connect(db_dsn) as conn:
        archived = conn.execute(
            "SELECT count(*) FROM outbox_event_archive WHERE id = ANY(%s)", (old + part_a,)
        ).fetchone()
        assert archived == (len(old) + len(part_a),)
        errors = conn.execute(
            "SELECT count(*) FROM outbox_event_error_archive WHERE event_id = ANY(%s)",
            (part_a[:20],),
        ).fetchone()
        assert errors == (40,)
        left = conn.execute(
            "SELECT count(*) FROM outbox_event_error WHERE event_id = ANY(%s)", (part_a,)
        ).fetchone()
        assert left == (0,)
        # Partition A's keys are free again; partition B (the dead event) is untouched.
        assert conn.execute(
            "SELECT count(*) FROM outbox_idempotency_key WHERE idempotency_key LIKE 'a-%%'"
        ).fetchone() == (0,)
        remaining = conn.execute(
            "SELECT count(*) FROM outbox_event WHERE id = ANY(%s)", (part_b,)
        ).fetchone()
        assert remaining == (len(part_b),)


def test_a_busy_lock_leaves_the_partition_for_the_next_run(db_dsn: str) -> None:
    report = _convert(db_dsn, partition_size=1000)
    ids = _publish(db_dsn, _events("test.ok", 1001))
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "UPDATE outbox_event SET status = 'done', done_at = now() - interval '10 days' "
            "WHERE id = ANY(%s)",
            (ids[:1000],),
        )
        conn.commit()
    holder = psycopg.connect(db_dsn)
    try:
        # A long reader of the outbox: the detach cannot get its lock and must not wait long.
        holder.execute("SELECT count(*) FROM outbox_event")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            busy = partitioner.maintain(conn, retention_days=7, lock_timeout_ms=50)
        holder.rollback()
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            # The row archiver leaves done rows to retirement: the busy run has copied this
            # partition's rows into the archive already, and moving them again would collide.
            moved = archiver.run_archive(
                conn, retention_days=7, dead_retention_days=None, batch_size=500
            )
            assert moved.done_moved == 0
            free = partitioner.maintain(conn, retention_days=7, lock_timeout_ms=50)
            names = [p["partition_name"] for p in partitioner.partitions(conn)]
    finally:
        holder.close()
    assert busy.retired == 0
    assert free.retired == 2  # p0 (empty) and the first partition
    assert f"outbox_event_p{report.first_bound}" not in names
    with psycopg.connect(db_dsn) as conn:
        # Copied once, however many runs tried.
        n = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM outbox_event_archive WHERE id = ANY(%s)",
            (ids[:1000],),
        ).fetchone()
        assert n == (1000, 1000)


def test_one_key_published_concurrently_is_one_event(db_dsn: str) -> None:
    _convert(db_dsn, partition_size=1000)
    event = _events("test.ok", 1, key_prefix="same")[0]
    first = psycopg.connect(db_dsn)
    try:
        first_id = publish(first, **event)
        out: list[int] = []
        blocked = threading.Event()

        def second() -> None:
            with psycopg.connect(db_dsn) as conn:
                blocked.set()
                out.append(publish(conn, **event))
                conn.commit()

        t = threading.Thread(target=second)
        t.start()
        blocked.wait(10)
        # The second publisher waits on the first's uncommitted key.
        wait_until(lambda: _waiting_on_lock(db_dsn), 10, "the second publish to wait")
        first.commit()
        t.join(10)
    finally:
        first.close()
    assert out == [first_id]
    with psycopg.connect(db_dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM outbox_event WHERE idempotency_key = %s",
            (event["idempotency_key"],),
        ).fetchone()
        assert n == (1,)


def _waiting_on_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    return row is not None and row[0] > 0


def test_the_single_table_is_the_default_and_archives_as_before(
    conn: psycopg.Connection[Any],
) -> None:
    assert partitioner.status(conn)["partitioned"] is False
    ids = publish_many(conn, _events("test.ok", 3))
    conn.execute(
        "UPDATE outbox_event SET status = 'done', done_at = now() - interval '10 days' "
        "WHERE id = ANY(%s)",
        (ids,),
    )
    assert conn.execute("SELECT archive_outbox_events(7)").fetchone() == (3,)
    conn.commit()
    conn.autocommit = True
    with pytest.raises(PartitionError, match="not partitioned"):
        partitioner.maintain(conn, retention_days=7)


def test_cli_converts_shows_and_refuses_bad_input(db_dsn: str) -> None:
    _publish(db_dsn, _events("test.ok", 5))
    bad = run_cli("db", "partition", "convert", "--partition-size", "10", dsn=db_dsn)
    assert bad.code == 2
    single = run_cli("db", "partition", "status", dsn=db_dsn)
    assert single.code == 0 and "single table" in single.stdout
    unpartitioned = run_cli("db", "partition", "maintain", dsn=db_dsn)
    assert unpartitioned.code == 1
    assert unpartitioned.stderr.strip().splitlines() == [
        "dispatchbox: error: outbox_event is not partitioned: run "
        "`dispatchbox db partition convert`"
    ]
    done = run_cli("db", "partition", "convert", "--partition-size", "1000", dsn=db_dsn)
    assert done.code == 0, done.stderr
    assert "swap (exclusive lock)" in done.stdout
    shown = run_cli("db", "partition", "status", dsn=db_dsn)
    assert "outbox_event_p0" in shown.stdout and "[0, 2000)" in shown.stdout
    again = run_cli("db", "partition", "convert", dsn=db_dsn)
    assert again.code == 1
    assert "already partitioned" in again.stderr


def test_a_second_conversion_at_once_is_refused_and_the_first_one_finishes(db_dsn: str) -> None:
    _publish(db_dsn, _events("test.ok", 5))
    reports: list[partitioner.ConversionReport] = []
    with psycopg.connect(db_dsn) as blocker:
        # Hold the first conversion at its first step (the index build waits for this lock).
        blocker.execute("LOCK TABLE outbox_event IN EXCLUSIVE MODE")
        first = threading.Thread(
            target=lambda: reports.append(_convert(db_dsn, partition_size=1000))
        )
        first.start()

        def first_holds_the_guard_and_waits() -> bool:
            row = blocker.execute(
                "SELECT count(*) FILTER (WHERE locktype = 'advisory' AND granted),"
                "       count(*) FILTER (WHERE relation = 'outbox_event'::regclass"
                "                          AND NOT granted)"
                "  FROM pg_locks"
                " WHERE database = (SELECT oid FROM pg_database"
                "                    WHERE datname = current_database())"
            ).fetchone()
            return row is not None and row[0] >= 1 and row[1] >= 1

        wait_until(first_holds_the_guard_and_waits, 30, "the first conversion to wait")
        second = run_cli("db", "partition", "convert", "--partition-size", "1000", dsn=db_dsn)
        blocker.rollback()
    first.join(60)
    assert second.code == 1
    assert second.stderr.strip().splitlines() == [
        "dispatchbox: error: another `dispatchbox db partition convert` is running on this "
        "database; let it finish (`dispatchbox db partition status` shows its phase)"
    ]
    assert len(reports) == 1 and reports[0].first_bound == 2000
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert partitioner.status(conn)["partitioned"]
        # The guard is released: a third run gets past it to the "already partitioned" check.
        with pytest.raises(PartitionError, match="already partitioned"):
            partitioner.convert(conn)


def test_ids_past_the_headroom_are_refused_and_the_conversion_can_be_abandoned(
    conn: psycopg.Connection[Any],
) -> None:
    conn.autocommit = True
    conn.execute("SELECT outbox_partition_track_keys()")
    conn.execute(
        "CREATE INDEX CONCURRENTLY outbox_event_idempotency_key_idx ON outbox_event "
        "(idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    bound = conn.execute("SELECT outbox_partition_prepare(1000, 0)").fetchone()
    assert bound == (1000,)
    conn.execute("SELECT setval(pg_get_serial_sequence('outbox_event', 'id'), 999)")
    with pytest.raises(psycopg.errors.CheckViolation):
        publish(conn, **_events("test.ok", 1)[0])
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="first partition"):
        conn.execute("SELECT outbox_partition_swap()")
    conn.execute("SELECT outbox_partition_abandon()")
    assert partitioner.status(conn)["phase"] is None
    event_id = publish(conn, **_events("test.ok", 1, key_prefix="after")[0])
    assert event_id > 1000
    # Nothing of the prepared conversion is left: it can start again.
    report = partitioner.convert(conn, partition_size=1000, lock_timeout_ms=LOCK_TIMEOUT_MS)
    assert report.first_bound > event_id


def test_db_status_estimates_a_partitioned_backlog_from_its_partitions(db_dsn: str) -> None:
    # Autovacuum never analyzes a partitioned parent: the estimates of `db status` (and of the
    # console, the monitor and the metrics) come from the partitions' statistics, summed.
    _convert(db_dsn, partition_size=10_000)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        partitioner.maintain(conn, retention_days=7, spare=4)  # room for 25,000 more ids
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload,"
            " next_attempt_at) SELECT 'o', g::text, 'test.ok', '{}', now() + interval '1 day'"
            " FROM generate_series(1, 25000) g"
        )
        for (leaf,) in conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree('outbox_event') WHERE isleaf"
        ).fetchall():
            conn.execute(f"ANALYZE {leaf}")  # names from the catalog
        status = outbox_status(conn)
    assert status.estimated == {"pending"}
    assert 20_000 <= status.values["pending"] <= 30_000, status.values
