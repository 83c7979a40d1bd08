"""WAL written per event: publish, drain and archival, each measured alone.

    .venv/bin/python -m bench wal [--events 50000] [--batch-sizes 100,1000]

On a fresh database of the throwaway cluster (fsync and full_page_writes on): `publish_many` of
--events events in one transaction, then a drain by `dispatchbox worker --processes 2` at each
batch size, then `archive_outbox_events(0)`, each after a CHECKPOINT (so each pays the full-page
images a production server pays once per page per checkpoint). Bytes from pg_current_wal_lsn()
before and after, divided by the events (and the archive table's size with its indexes, per
event): the figure behind the WAL arithmetic of
docs/en/scaling.md (replication bandwidth, archive storage, what a billion events a day write).
"""

from __future__ import annotations

import argparse
from typing import Any

import psycopg

from bench.common import BenchDatabase, checkpoint, emit_json, print_table, wait_drained, worker
from dispatchbox import publish_many


def lsn_bytes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


def one(bench: BenchDatabase, events: int, batch: int) -> dict[str, Any]:
    dsn = bench.fresh()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            checkpoint(dsn)
            start = lsn_bytes(conn)
            with psycopg.connect(dsn) as tx:
                publish_many(
                    tx,
                    (
                        {
                            "aggregate_type": "order",
                            "aggregate_id": str(i),
                            "event_type": "bench.noop",
                            "payload": {"order_id": i, "customer": f"c-{i % 5000}", "total": 12.5},
                        }
                        for i in range(events)
                    ),
                )
                tx.commit()
            published = lsn_bytes(conn)
            checkpoint(dsn)
            before_drain = lsn_bytes(conn)
            flags = ("--processes", "2", "--batch-size", str(batch), "--concurrency", "10")
            with worker(dsn, *flags):
                wait_drained(dsn)
            drained = lsn_bytes(conn)
            checkpoint(dsn)
            before_archive = lsn_bytes(conn)
            conn.execute("SELECT archive_outbox_events(0)")
            archived = lsn_bytes(conn)
            row = conn.execute(
                "SELECT pg_total_relation_size('outbox_event_archive')::bigint"
            ).fetchone()
            archive_size = int(row[0]) if row else 0
        return {
            "batch": batch,
            "events": events,
            "publish_many_bytes": (published - start) / events,
            "drain_bytes": (drained - before_drain) / events,
            "archive_bytes": (archived - before_archive) / events,
            "total_bytes": (published - start + drained - before_drain + archived - before_archive)
            / events,
            "archive_table_bytes": archive_size / events,
        }
    finally:
        bench.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-sizes", default="100,1000")
    args = parser.parse_args(argv)
    bench = BenchDatabase()
    try:
        rows = [one(bench, args.events, int(b)) for b in args.batch_sizes.split(",")]
    finally:
        bench.close()
    print_table("WAL bytes per event (after a checkpoint: full-page images included)", rows)
    figures = {"server": bench.where, "rows": rows}
    emit_json("wal", figures)
    return figures


if __name__ == "__main__":
    main()
