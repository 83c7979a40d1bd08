"""How fast could a PostgreSQL outbox drain at all? The per-row raw loop against a log read by
position, side by side.

    python -m bench.ceiling [--events 100000] [--clients 2] [--batch 1000] [--repeat 3]

The per-row raw loop (bench/raw_sql.py) is what any per-row queue pays at least, dispatchbox and
its peers alike: every event is claimed with an UPDATE (a new row version, its index entries, WAL)
and completed with another. A log read by position, as PgQ and Kafka consumers read theirs,
writes nothing per event: each client takes the next range of ids from one cursor row (one small
UPDATE per batch), reads the range's rows, and records the range as finished in one more row.
Per event it only reads. Both drain the same outbox rows, in the same run, in alternating rounds.

What the log gives up is the per-event state that the per-row design keeps in the row itself:
a failed event must be copied elsewhere to be retried, a crashed consumer's range must be
re-read as a whole, priorities and delays need separate logs, and ids must be committed in order
(PgQ waits for the transaction snapshot to pass an id before any consumer may read up to it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import psycopg

from bench import raw_sql
from bench.common import BenchDatabase, checkpoint, emit_json, print_table, seed

SETUP = """
CREATE UNLOGGED TABLE IF NOT EXISTS bench_cursor (one int PRIMARY KEY, next_id bigint NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS bench_finished (upto bigint NOT NULL, n int NOT NULL);
TRUNCATE bench_cursor, bench_finished;
INSERT INTO bench_cursor SELECT 1, min(id) FROM outbox_event;
"""
TAKE = "UPDATE bench_cursor SET next_id = next_id + %s WHERE one = 1 RETURNING next_id - %s"
READ = "SELECT id, event_type, payload FROM outbox_event WHERE id >= %s AND id < %s ORDER BY id"
FINISH = "INSERT INTO bench_finished VALUES (%s, %s)"


def _positional_client(dsn: str, batch: int, last: int, ready: Any, go: Any, done: Any) -> None:
    # Not autocommit: the cursor's row lock is held only for its own short transaction.
    with psycopg.connect(dsn) as conn:
        ready.release()
        go.wait()
        while True:
            row = conn.execute(TAKE, [batch, batch]).fetchone()
            conn.commit()
            assert row is not None
            start = int(row[0])
            if start > last:
                done.release()
                return
            rows = conn.execute(READ, [start, start + batch]).fetchall()
            conn.execute(FINISH, [start + batch, len(rows)])
            conn.commit()


def drain_positional(dsn: str, *, clients: int, batch: int) -> tuple[float, int]:
    """Seconds to read every row by position with `clients` processes, and rows read."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)
        row = conn.execute("SELECT max(id), count(*) FROM outbox_event").fetchone()
    assert row is not None
    last, total = int(row[0]), int(row[1])
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Semaphore(0), ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(target=_positional_client, args=(dsn, batch, last, ready, go, done))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    started = time.monotonic()
    go.set()
    for _ in procs:
        done.acquire()
    seconds = time.monotonic() - started
    for p in procs:
        p.join()
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(n), 0) FROM bench_finished").fetchone()
    assert row is not None
    if int(row[0]) != total:  # each row read exactly once
        raise RuntimeError(f"{row[0]} rows read for {total} in the outbox")
    return seconds, total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    rounds: list[dict[str, float]] = []
    try:
        for _ in range(max(1, args.repeat)):
            dsn = db.fresh()
            seed(dsn, args.events)
            checkpoint(dsn)
            raw_start, _, _ = raw_sql.drain(dsn, clients=args.clients, batch=args.batch)
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM max(done_at) - %s)::float8, count(*) "
                    "FILTER (WHERE status = 'done') FROM outbox_event",
                    [raw_start],
                ).fetchone()
            assert row is not None and int(row[1]) == args.events, "raw loop left rows"
            raw_rate = args.events / float(row[0])
            checkpoint(dsn)
            seconds, read = drain_positional(dsn, clients=args.clients, batch=args.batch)
            rounds.append({"raw": raw_rate, "positional": read / seconds})
            db.drop(dsn)
    finally:
        db.close()
    rows = []
    labels = {"raw": "per-row raw loop (claim + done)", "positional": "log read by position"}
    for name, label in labels.items():
        rates = sorted(r[name] for r in rounds)
        rows.append(
            {
                "scenario": label,
                "clients": args.clients,
                "batch": args.batch,
                "events": args.events,
                "events_per_s": rates[len(rates) // 2],
                "runs_events_per_s": [round(r) for r in rates],
            }
        )
    ratios = sorted(r["positional"] / r["raw"] for r in rounds)
    rows[1]["ratio_to_raw"] = ratios[len(ratios) // 2]
    print_table(f"ceiling ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("ceiling", result)
    return result


if __name__ == "__main__":
    main()
