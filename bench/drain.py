"""Drain throughput: N no-op events through `dispatchbox worker`, against the raw SQL loop.

    python -m bench.drain [--events 100000] [--processes 1,2] [--batch-sizes 100,1000]

The worker starts on an empty outbox and waits; the events are then committed in one statement,
and the clock runs from that commit until the last event is done (the database's clock for
both ends, in this scenario and in the raw loop's). Each run checks its own result:
every event done with exactly one attempt (a duplicate delivery would make two).
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bench import raw_sql
from bench.common import (
    BenchDatabase,
    checkpoint,
    children,
    count_where,
    emit_json,
    median_run,
    peak_rss_mb,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
    worker,
)


def run_dispatchbox(
    db: BenchDatabase,
    *,
    events: int,
    processes: int,
    batch: int,
    concurrency: int,
    event_type: str = "bench.noop",
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        args = (
            "--processes",
            str(processes),
            "--batch-size",
            str(batch),
            "--concurrency",
            str(concurrency),
            *extra,
        )
        with worker(dsn, *args) as proc:
            checkpoint(dsn)
            start = seed(dsn, events, event_type)
            wait_drained(dsn)
            seconds = seconds_until_last_done(dsn, start)
            rss = [peak_rss_mb(pid) for pid in children(proc.pid)]
        once = count_where(dsn, "status = 'done' AND attempts = 1")
        expected_attempts = 1 if event_type != "bench.fail_once" else 2
        exact = count_where(dsn, f"status = 'done' AND attempts = {expected_attempts}")
        return {
            "scenario": f"dispatchbox {event_type}",
            "processes": processes,
            "batch": batch,
            "concurrency": concurrency,
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "peak_rss_mb_per_process": max(rss) if rss else 0.0,
            "exactly_once": exact == events,
            "first_attempt": once,
        }
    finally:
        db.drop(dsn)


def run_raw(db: BenchDatabase, *, events: int, clients: int, batch: int) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        checkpoint(dsn)
        seed(dsn, events)
        start = raw_sql.drain(dsn, clients=clients, batch=batch)
        seconds = seconds_until_last_done(dsn, start)
        done = count_where(dsn, "status = 'done'")
        return {
            "scenario": "raw SQL loop",
            "processes": clients,
            "batch": batch,
            "concurrency": 0,
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "peak_rss_mb_per_process": 0.0,
            "exactly_once": done == events,
            "first_attempt": done,
        }
    finally:
        db.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--batch-sizes", default="100,1000")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--extra", default="", help="extra worker flags, space separated")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each row; the median run is reported"
    )
    args = parser.parse_args(argv)
    db = BenchDatabase()
    rows: list[dict[str, Any]] = []
    try:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            raw = median_run(
                args.repeat, partial(run_raw, db, events=args.events, clients=2, batch=batch)
            )
            rows.append(raw)
            for processes in [int(p) for p in args.processes.split(",")]:
                row = median_run(
                    args.repeat,
                    partial(
                        run_dispatchbox,
                        db,
                        events=args.events,
                        processes=processes,
                        batch=batch,
                        concurrency=args.concurrency,
                        extra=tuple(args.extra.split()),
                    ),
                )
                row["ratio_to_raw"] = row["events_per_s"] / raw["events_per_s"]
                rows.append(row)
    finally:
        db.close()
    print_table(f"drain ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("drain", result)
    return result


if __name__ == "__main__":
    main()
