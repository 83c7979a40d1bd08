"""Failure-path throughput: every event fails once, then succeeds (backoff 0), against the
happy path with the same settings in the same run.

    python -m bench.failure [--events 50000] [--processes 2] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import BenchDatabase, emit_json, print_table
from bench.drain import run_dispatchbox


def run(db: BenchDatabase, *, events: int, processes: int, batch: int) -> list[dict[str, Any]]:
    extra = ("--backoff-base", "0", "--backoff-max", "0", "--poll-interval", "0.05")
    happy = run_dispatchbox(
        db, events=events, processes=processes, batch=batch, concurrency=10, extra=extra
    )
    failing = run_dispatchbox(
        db,
        events=events,
        processes=processes,
        batch=batch,
        concurrency=10,
        event_type="bench.fail_once",
        extra=extra,
    )
    failing["slowdown_vs_happy"] = happy["events_per_s"] / failing["events_per_s"]
    return [happy, failing]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    try:
        rows = run(db, events=args.events, processes=args.processes, batch=args.batch_size)
    finally:
        db.close()
    print_table(f"failure path ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("failure", result)
    return result


if __name__ == "__main__":
    main()
