"""A REPEATABLE READ transaction held open beside rounds of events: the drain rate per round,
next to the same rounds without it.

    python -m bench held_snapshot [--rounds 5] [--events 100000] [--processes 2] [--quick]

Each round commits --events no-op events in one statement and times them until the last is
done. With the held snapshot, vacuum may not remove the row versions the claims and completions
leave behind (every event leaves two), so each round's claims walk past more of them; without
it, autovacuum keeps up between rounds. Beside each rate: the outbox's dead tuples and the age
of what holds back cleanup, as the view outbox_cleanup_horizon (and `db status`) report them.
--quick: 3 rounds of 20,000.
"""

from __future__ import annotations

import argparse
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


def horizon(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT held_seconds, held_xids, outbox_dead_tuples FROM outbox_cleanup_horizon"
        ).fetchone()
    assert row is not None
    return {"held_seconds": round(row[0], 1), "held_xids": row[1], "dead_tuples": row[2]}


def run(db: BenchDatabase, *, held: bool, rounds: int, events: int, processes: int) -> list[dict]:
    dsn = db.fresh()
    holder: psycopg.Connection[Any] | None = None
    out: list[dict[str, Any]] = []
    try:
        with worker(dsn, "--processes", str(processes), "--batch-size", "1000"):
            if held:
                holder = psycopg.connect(dsn, application_name="bench-held-snapshot")
                holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                holder.execute("SELECT count(*) FROM outbox_event")  # the snapshot is taken
            for n in range(1, rounds + 1):
                checkpoint(dsn)
                start = seed(dsn, events)
                wait_drained(dsn)
                seconds = seconds_until_last_done(dsn, start)
                out.append(
                    {
                        "held snapshot": "yes" if held else "no",
                        "round": n,
                        "events": events,
                        "seconds": round(seconds, 2),
                        "events/s": round(events / seconds),
                        **horizon(dsn),
                    }
                )
                print(f"  {out[-1]}", flush=True)
    finally:
        if holder is not None:
            holder.close()
        db.drop(dsn)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench held_snapshot", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20,000")
    args = parser.parse_args(argv or [])
    if args.quick:
        args.rounds, args.events = 3, 20_000
    db = BenchDatabase()
    try:
        rows = []
        for held in (False, True):
            rows += run(
                db, held=held, rounds=args.rounds, events=args.events, processes=args.processes
            )
    finally:
        db.close()
    print_table("drain rate per round, with and without a held REPEATABLE READ snapshot", rows)
    result = {"where": db.where, "rounds": rows}
    emit_json("held_snapshot", result)
    return result


if __name__ == "__main__":
    main()
