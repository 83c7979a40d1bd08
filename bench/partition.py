"""The outbox as one table archived row by row, beside the partitioned outbox retired a
partition at a time: table size and drain rate over rounds, and the longest lock wait of a
worker backend while archival or retirement runs.

    python -m bench partition [--rounds 5] [--events 100000] [--processes 2] [--quick]
                              [--convert-rows 600000] [--partition-size N]

Each round commits --events no-op events in one statement and times them until the last is
done while the previous round's done events leave the outbox: on the single table by
``outbox_archive_batch`` (DELETE ... RETURNING into the archive, 10,000 a batch and a commit
each: what the pg_cron job runs), on the partitioned outbox (converted while empty, partitions of
--events / 2 ids) by ``outbox_partition_retire`` (copy into the archive, DETACH, DROP).
After each round: the outbox's total size (heap, indexes, TOAST; every partition for the
partitioned outbox). A sampler reads pg_stat_activity every 5 ms during archival and keeps the
longest lock wait of a worker backend on a table lock (what a DETACH makes workers wait for) and
on any lock (row locks between the workers' own statements too).

Then the conversion of a populated outbox: --convert-rows done events and --events pending
ones, the workers draining the pending ones and a publisher committing one event every 5 ms
while `db partition convert` runs; each step's time, the longest lock waits of the workers and
the longest publish (insert + commit). --quick: 3 rounds of 20,000.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from bench.common import (
    BenchDatabase,
    checkpoint,
    emit_json,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
    worker,
)
from dispatchbox import publish
from dispatchbox.maintenance import partitioner

# Waits on a table lock (wait_event 'relation': what DETACH's ACCESS EXCLUSIVE causes), and on
# any lock (row and transaction locks between the workers' own statements included).
_WAITS = """
SELECT COALESCE(max(w) FILTER (WHERE wait_event = 'relation'), 0)::float8,
       COALESCE(max(w), 0)::float8
  FROM (SELECT EXTRACT(EPOCH FROM clock_timestamp() - state_change) AS w, wait_event
          FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND application_name LIKE 'dispatchbox-worker-%'
           AND datname = current_database()) waits
"""

# pg_partition_tree lists nothing for a plain table.
_SIZE = """
SELECT CASE WHEN outbox_is_partitioned()
            THEN (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('outbox_event'))
            ELSE pg_total_relation_size('outbox_event') END::bigint
"""


class LockWaits(threading.Thread):
    """The longest lock waits of a worker backend seen while running (5 ms samples): on a
    table lock, and on any lock."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.table = 0.0
        self.any = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                row = conn.execute(_WAITS).fetchone()
                if row is not None:
                    self.table = max(self.table, float(row[0]))
                    self.any = max(self.any, float(row[1]))
                self.done.wait(0.005)


def archive(dsn: str, *, partitioned: bool, before: datetime) -> tuple[float, LockWaits]:
    """Archive every event done before ``before`` (the previous rounds'); (seconds, the lock
    waits the workers showed meanwhile)."""
    sampler = LockWaits(dsn)
    sampler.start()
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if partitioned:
            conn.execute(
                "CALL outbox_partition_retire(clock_timestamp() - %s::timestamptz, 200, NULL)",
                [before],
            )
        else:
            # What the pg_cron job does on the single table: a commit per batch.
            while True:
                row = conn.execute(
                    "SELECT outbox_archive_batch('done', %s, 10000)", [before]
                ).fetchone()
                if not row or row[0] == 0:
                    break
    seconds = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    return seconds, sampler


class Publisher(threading.Thread):
    """One event every 5 ms, each its own transaction; keeps the longest (insert + commit)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.longest = 0.0
        self.count = 0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            while not self.done.is_set():
                started = time.perf_counter()
                publish(
                    conn,
                    aggregate_type="bench",
                    aggregate_id=str(self.count),
                    event_type="bench.noop",
                    payload={},
                    idempotency_key=f"probe-{self.count}",
                )
                conn.commit()
                self.longest = max(self.longest, time.perf_counter() - started)
                self.count += 1
                self.done.wait(0.005)


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the publisher did not get going")
        time.sleep(0.05)


def conversion(db: BenchDatabase, *, rows: int, pending: int, processes: int) -> dict[str, Any]:
    """Convert an outbox of ``rows`` done and ``pending`` pending events while workers drain
    it and a publisher runs."""
    dsn = db.fresh()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, "
                "status, attempts, done_at) SELECT 'bench', g::text, 'bench.noop', "
                "jsonb_build_object('n', g), 'done', 1, now() FROM generate_series(1, %s) g",
                [rows],
            )
            conn.execute("VACUUM ANALYZE outbox_event")
        seed(dsn, pending)
        with worker(dsn, "--processes", str(processes), "--batch-size", "1000"):
            waits = LockWaits(dsn)
            probe = Publisher(dsn)
            waits.start()
            probe.start()
            # The drain and the publisher under way before the conversion, and after it.
            _until(lambda: probe.count >= 100)
            with psycopg.connect(dsn, autocommit=True) as conn:
                report = partitioner.convert(conn, partition_size=1_000_000)
            after = probe.count
            _until(lambda: probe.count >= after + 100)
            probe.done.set()
            waits.done.set()
            probe.join()
            waits.join()
            wait_drained(dsn)
        return {
            "outbox rows": rows + pending,
            "index s": round(report.index_seconds, 3),
            "prepare s": round(report.prepare_seconds, 3),
            "validate s": round(report.validate_seconds, 3),
            "swap ms": round(report.swap_seconds * 1000, 1),
            "swap tries": report.swap_attempts,
            "finish s": round(report.finish_seconds, 3),
            "worker table-lock wait ms": round(waits.table * 1000, 1),
            "worker any-lock wait ms": round(waits.any * 1000, 1),
            "longest publish ms": round(probe.longest * 1000, 1),
            "published": probe.count,
        }
    finally:
        db.drop(dsn)


def size_mb(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_SIZE).fetchone()
    return round(int(row[0] if row else 0) / 1e6, 1)


def run(
    db: BenchDatabase,
    *,
    partitioned: bool,
    rounds: int,
    events: int,
    processes: int,
    partition_size: int | None = None,
) -> list[dict[str, Any]]:
    dsn = db.fresh()
    size = partition_size or max(1000, events // 2)
    spare = events // size + 2
    out: list[dict[str, Any]] = []
    try:
        if partitioned:
            with psycopg.connect(dsn, autocommit=True) as conn:
                partitioner.convert(conn, partition_size=size)
        with worker(dsn, "--processes", str(processes), "--batch-size", "1000"):
            for n in range(1, rounds + 1):
                checkpoint(dsn)
                if partitioned:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute("SELECT outbox_partition_create_ahead(%s)", [spare])
                start = seed(dsn, events)
                # The previous rounds' done events leave while this round drains.
                archive_s, waits = archive(dsn, partitioned=partitioned, before=start)
                wait_drained(dsn)
                seconds = seconds_until_last_done(dsn, start)
                out.append(
                    {
                        "outbox": "partitioned" if partitioned else "single table",
                        "round": n,
                        "events/s": round(events / seconds),
                        "archival s": round(archive_s, 2),
                        "worker table-lock wait ms": round(waits.table * 1000, 1),
                        "worker any-lock wait ms": round(waits.any * 1000, 1),
                        "outbox MB": size_mb(dsn),
                    }
                )
                print(f"  {out[-1]}", flush=True)
    finally:
        db.drop(dsn)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench partition", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--convert-rows", type=int, default=600_000)
    parser.add_argument(
        "--partition-size", type=int, default=None, help="ids a partition (default --events / 2)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20,000")
    args = parser.parse_args(argv or [])
    if args.quick:
        args.rounds, args.events, args.convert_rows = 3, 20_000, 100_000
    db = BenchDatabase()
    try:
        rows: list[dict[str, Any]] = []
        for partitioned in (False, True):
            rows += run(
                db,
                partitioned=partitioned,
                rounds=args.rounds,
                events=args.events,
                processes=args.processes,
                partition_size=args.partition_size,
            )
        converted = conversion(
            db, rows=args.convert_rows, pending=args.events, processes=args.processes
        )
        print(f"  {converted}", flush=True)
    finally:
        db.close()
    print_table("single table (DELETE archival) beside partitioned outbox (retirement)", rows)
    print_table("conversion of a populated outbox, workers and a publisher running", [converted])
    result = {"where": db.where, "rounds": rows, "conversion": converted}
    emit_json("partition", result)
    return result


if __name__ == "__main__":
    main()
