"""Publish throughput: one event per transaction, and publish_many in batches.

python -m bench.publish [--single 5000] [--many 100000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from bench.common import BenchDatabase, count_where, emit_json, median_of, print_table
from dispatchbox import publish, publish_many


def _event(i: int) -> dict[str, Any]:
    return {
        "aggregate_type": "order",
        "aggregate_id": str(i),
        "event_type": "order.created",
        "payload": {"order_id": i, "total": 1999, "currency": "EUR"},
    }


def run(db: BenchDatabase, *, single: int, many: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    dsn = db.fresh()
    try:
        with psycopg.connect(dsn) as conn:
            start = time.perf_counter()
            for i in range(single):
                publish(conn, **_event(i))
                conn.commit()
            seconds = time.perf_counter() - start
        rows.append(
            {
                "scenario": "publish, one transaction each",
                "events": single,
                "seconds": seconds,
                "events_per_s": single / seconds,
            }
        )
        events = [_event(i) for i in range(many)]
        with psycopg.connect(dsn) as conn:
            start = time.perf_counter()
            publish_many(conn, events)
            conn.commit()
            seconds = time.perf_counter() - start
        rows.append(
            {
                "scenario": "publish_many, one transaction",
                "events": many,
                "seconds": seconds,
                "events_per_s": many / seconds,
            }
        )
        assert count_where(dsn, "true") == single + many, "every published event is there"
    finally:
        db.drop(dsn)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--many", type=int, default=100_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each row; the median run is reported"
    )
    args = parser.parse_args(argv)
    db = BenchDatabase()
    try:
        runs = [run(db, single=args.single, many=args.many) for _ in range(max(1, args.repeat))]
        # Each run checked its own count; report each scenario's median run.
        rows = [median_of(list(scenario)) for scenario in zip(*runs, strict=True)]
    finally:
        db.close()
    print_table(f"publish ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("publish", result)
    return result


if __name__ == "__main__":
    main()
