"""The SQL function redrive_dead_events (psql, pg_cron) with and without failed batches: since
migration 0014 a failed batch holds its aggregates back for the rest of the run, and the set of
held aggregates must not make the later batches slower.

    .venv/bin/python -m bench redrive_function [--events 60000] [--failing 8] [--repeat 2]

Each run migrates a fresh database, inserts --events dead events (one aggregate each), and times
one ``SELECT * FROM redrive_dead_events()`` (batches of 5,000). "failing" adds a trigger that makes
the update of --failing events raise, spread over the run, so their batches roll back and their
aggregates are held; runs alternate. Prints the median of each and their ratio, then one JSON
line. The first version of 0014 kept the held aggregates in a text[] compared with <> ALL, walked
whole for every row: with 8 failed batches of 60,000 events it took 9.6-9.8 s against 1.2-1.4 s
without failures; kept as jsonb keys it takes 1.0 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg

from bench.common import BenchDatabase, emit_json

DEAD = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, attempts,
    max_attempts, last_error, last_error_at, dead_at)
SELECT 'order', g::text, 'order.paid', 'dead', 1, 1, 'KeyError: x', now(), now()
  FROM generate_series(1, %(events)s::bigint) g
"""

FAIL = """
CREATE FUNCTION bench_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = ANY(%(ids)s::bigint[]) THEN RAISE EXCEPTION 'bench: failing update'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_fail BEFORE UPDATE ON outbox_event
    FOR EACH ROW EXECUTE FUNCTION bench_fail();
"""


def one_run(db: BenchDatabase, *, events: int, failing: int) -> tuple[float, tuple[Any, ...]]:
    dsn = db.fresh()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DEAD, {"events": events})
            if failing:
                step = events // failing
                ids = [1 + i * step for i in range(failing)]
                # The literal array: the trigger's own check must not be what is timed.
                conn.execute(FAIL.replace("%(ids)s", "'{" + ",".join(map(str, ids)) + "}'"))
            conn.execute("VACUUM ANALYZE")
            started = time.perf_counter()
            row = conn.execute("SELECT * FROM redrive_dead_events()").fetchone()
            seconds = time.perf_counter() - started
        assert row is not None
        return seconds, tuple(row)
    finally:
        db.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--failing", type=int, default=8, help="events whose update raises")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    runs: dict[str, list[float]] = {"without failures": [], "with failed batches": []}
    counts: dict[str, Any] = {}
    try:
        for _ in range(args.repeat):
            for label, failing in (("without failures", 0), ("with failed batches", args.failing)):
                seconds, row = one_run(db, events=args.events, failing=failing)
                runs[label].append(seconds)
                counts[label] = row[:3]
    finally:
        db.close()
    medians = {label: statistics.median(times) for label, times in runs.items()}
    print(f"redrive_dead_events() on {args.events:,} dead events ({db.where}), median of "
          f"{args.repeat}:")  # fmt: skip
    for label, times in runs.items():
        shown = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {label:20s} {medians[label]:6.2f} s  runs [{shown}]  "
              f"processed/skipped/failed {counts[label]}")  # fmt: skip
    ratio = medians["with failed batches"] / medians["without failures"]
    print(f"  with / without failures: {ratio:.2f}")
    figures = {"events": args.events, "failing": args.failing, "medians_s": medians,
               "runs_s": runs, "ratio": ratio}  # fmt: skip
    emit_json("redrive_function", figures)
    return figures


if __name__ == "__main__":
    main()
