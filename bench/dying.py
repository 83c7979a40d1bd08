"""Dying throughput: events that all fail for good, through `dispatchbox worker`, with the
dead-letter summary's triggers (migration 0012) on and off, alternating in one run.

    .venv/bin/python -m bench dying [--events 20000] [--processes 2] [--batch-size 100]
                                    [--repeat 3]

Each run starts a worker on a fresh database, commits --events ``bench.die`` events (a
PermanentError in five error groups: every event dies at its first attempt, so every death goes
through the fingerprint mirror and the summary), and times from that commit to the last death
(the database's clock, max(dead_at)). "off" puts back 0011's trigger function on inserts into
the mirror and disables the update and delete triggers that feed the summary (what dying cost
before migration 0012); "on" is the migration as shipped. Prints the median of each and their
ratio, then one JSON line.
"""

from __future__ import annotations

import argparse
import re
import statistics
from typing import Any

import psycopg

from bench.common import BenchDatabase, checkpoint, emit_json, seed, wait_drained, worker
from dispatchbox.data import queries

TRIGGERS = ("outbox_dead_summary_delete", "outbox_dead_summary_update")


def seen_0011() -> str:
    """0011's function on inserts into the mirror, as it was before 0012 added the summary's
    delta: read from the migration itself, made CREATE OR REPLACE."""
    text = (queries.sql_dir() / "migrations" / "0011_redrive_operations.sql").read_text()
    found = re.search(
        r"^CREATE FUNCTION outbox_error_fingerprint_seen_sync\(\).*?^\$\$;", text, re.M | re.S
    )
    if found is None:
        raise RuntimeError("0011_redrive_operations.sql no longer defines the function")
    return found.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def one_run(db: BenchDatabase, *, summary: bool, events: int, processes: int, batch: int) -> float:
    dsn = db.fresh()
    try:
        if not summary:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(seen_0011().encode())
                for name in TRIGGERS:
                    conn.execute(f"ALTER TABLE outbox_dead_fingerprint DISABLE TRIGGER {name}")
        args = (
            "--processes",
            str(processes),
            "--batch-size",
            str(batch),
            "--poll-interval",
            "0.05",
        )
        with worker(dsn, *args):
            checkpoint(dsn)
            start = seed(dsn, events, "bench.die")
            wait_drained(dsn)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM max(dead_at) - %s)::float8 FROM outbox_event "
                "WHERE status = 'dead'",
                [start],
            ).fetchone()
            assert row is not None and row[0] == events, f"{row} dead, expected {events}"
            if summary:
                (counted,) = conn.execute(
                    "SELECT coalesce(sum(dead_count), 0) FROM outbox_dead_groups"
                ).fetchone() or (0,)
                assert counted == events, f"summary says {counted}, expected {events}"
        return events / float(row[1])
    finally:
        db.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.repeat):
            for mode in ("off", "on"):
                rates[mode].append(
                    one_run(
                        db,
                        summary=mode == "on",
                        events=args.events,
                        processes=args.processes,
                        batch=args.batch_size,
                    )
                )
    finally:
        db.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"dying throughput ({db.where}), {args.events:,} events, median of {args.repeat}:")
    print(f"  summary triggers off: {off:8.0f} deaths/s  runs {[round(r) for r in rates['off']]}")
    print(f"  summary triggers on:  {on:8.0f} deaths/s  runs {[round(r) for r in rates['on']]}")
    print(f"  on / off: {on / off:.2f}")
    result = {"where": db.where, "off": rates["off"], "on": rates["on"], "ratio": on / off}
    emit_json("dying", result)
    return result


if __name__ == "__main__":
    main()
