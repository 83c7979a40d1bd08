"""Big tables: claim latency, drain rate, `db status` and the dead-letter reads on an outbox of
10,000,000 pending and 1,000,000 dead events, beside the same figures on a small outbox.

    .venv/bin/python -m bench big_tables [--quick] [--pending 10000000] [--dead 1000000]

Three stages in one run, each a database measured the same way:

* small:       10,000 pending + 1,000 dead events (the reference);
* dead-heavy:  10,000 pending + the full dead set (what the dead-letter reads cost because there
               are many dead events, whatever the pending backlog);
* big:         the dead-heavy database with the pending backlog grown to the full size.

Loading is INSERT ... SELECT generate_series in 1,000,000-row statements with a pause between
them (the machine is shared), then VACUUM ANALYZE and a CHECKPOINT. At each stage, in order:

* ``db status``: outbox_status() as `dispatchbox db status` runs it (exact counts up to 10,000
  events a state, planner estimates above), and the exact ``health`` query (the outbox_health
  view) beside it; median of --repeat calls on an open pooled connection (as the API and the
  console hold one; the CLI adds a connection's set-up, the same on any table).
* dead-letter reads through OutboxRepository, as the CLI, API and console make them: stats (what
  `dead-events stats` shows: totals and every grouping), stats by error fingerprint only, count,
  the first list page, a keyset page deep in the ids.
* claim latency: --claims claims of --claim-batch events (worker.store.claim, then complete, as a
  worker does); p50 and p99 of the claim statement.
* drain: a real `dispatchbox worker` (--processes 2) delivers --drain no-op events from the
  backlog; the rate runs from the first to the last of them done (database clock), so process
  start-up is not in it.

Prints each figure beside the small stage's and their ratio (target: within 2x), then one JSON
line. --quick: 1,000,000 pending and 100,000 dead, fewer repeats (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from bench.common import BenchDatabase, checkpoint, emit_json, launch_worker, percentile
from dispatchbox import OutboxRepository, queries
from dispatchbox.outbox_status import outbox_status
from dispatchbox.worker import store

CHUNK = 1_000_000

PENDING = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', g::text, 'bench.noop',
       jsonb_build_object('order_id', g, 'customer', 'customer-' || (g %% 5000),
                          'total', (g %% 1000) * 1.5, 'currency', 'EUR')
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
"""

# The dead set of bench/dead_letters.py, shortened: 8 event types, 4 aggregate types, 5 error
# families whose messages carry ids, deaths spread over 30 days.
DEAD = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
    max_attempts, last_error, last_error_at, dead_at, created_at)
SELECT (ARRAY['order', 'customer', 'invoice', 'shipment'])[1 + g %% 4],
       g::text,
       (ARRAY['order.created', 'order.paid', 'customer.updated', 'invoice.issued',
              'shipment.sent', 'order.cancelled', 'invoice.voided', 'customer.deleted'])
           [1 + (g / 7) %% 8],
       jsonb_build_object('order_id', g, 'total', (g %% 1000) * 1.5),
       'dead', 5, 5,
       CASE g %% 5
         WHEN 0 THEN 'HTTPError: 503 Server Error: Service Unavailable for url: '
                     || 'https://payments.example.com/orders/' || g
         WHEN 1 THEN 'KeyError: ''customer_' || g || ''''
         WHEN 2 THEN 'ValueError: order ' || g || ' has invalid amount ' || (g %% 100) || '.50'
         WHEN 3 THEN 'TimeoutError: request ' || md5(g::text)::uuid || ' timed out after 30.0s'
         ELSE 'UniqueViolation: duplicate key value violates unique constraint "payments_pkey"'
       END,
       now() - make_interval(secs => g * 2592.0 / %(scale)s),
       now() - make_interval(secs => g * 2592.0 / %(scale)s),
       now() - make_interval(secs => g * 2592.0 / %(scale)s) - interval '1 hour'
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
"""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load(dsn: str, statement: str, first: int, count: int, **extra: Any) -> float:
    """Insert rows first..first+count-1 in CHUNK-row statements; seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(first, first + count, CHUNK):
            hi = min(lo + CHUNK, first + count) - 1
            conn.execute(statement, {"first": lo, "last": hi, **extra})
            if hi - lo + 1 == CHUNK:
                log(f"  loaded {hi - first + 1:,} of {count:,}")
                time.sleep(2)  # let the other engineers' work in between
    return time.perf_counter() - started


def settle(dsn: str) -> float:
    """VACUUM ANALYZE (what autovacuum does on a live table) and a checkpoint; seconds."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE outbox_event")
        conn.execute("VACUUM ANALYZE outbox_dead_fingerprint")
    checkpoint(dsn)
    return time.perf_counter() - started


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def reads(dsn: str, repeat: int, dead_ids: tuple[int, int]) -> dict[str, float]:
    """Median ms of each read on an open pooled connection, as the API and the console make
    them (the CLI adds a connection's set-up, the same few ms on any table)."""
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        return _reads(pool, repeat, dead_ids)


def _reads(pool: ConnectionPool[Any], repeat: int, dead_ids: tuple[int, int]) -> dict[str, float]:
    repo = OutboxRepository(pool=pool)
    deep = dead_ids[0] + (dead_ids[1] - dead_ids[0]) * 9 // 10

    def status() -> None:
        with pool.connection() as conn:
            outbox_status(conn)

    def health_exact() -> None:
        with pool.connection() as conn:
            queries.fetch_one(conn, "health")

    operations: dict[str, Callable[[], Any]] = {
        "db status (outbox_status)": status,
        "health view, exact counts": health_exact,
        "dead-events stats (all groupings)": lambda: repo.dead_event_stats(),
        "stats --by error (fingerprints)": lambda: repo.dead_event_stats(by=["error"]),
        "stats --by event_type": lambda: repo.dead_event_stats(by=["event_type"]),
        "dead count (no filter)": lambda: repo.count_dead_events(),
        "dead list, first page (50)": lambda: repo.fetch_dead_events(limit=50),
        "dead list, keyset page at 90%": lambda: repo.fetch_dead_events(limit=50, after_id=deep),
    }
    out = {}
    for label, fn in operations.items():
        fn()  # warm the cache: every stage is measured warm
        out[label] = median_ms(fn, repeat)
        log(f"  {label}: {out[label]:.2f} ms")
    return out


async def _claims(dsn: str, claims: int, batch: int) -> list[float]:
    times = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(claims):
            started = time.perf_counter()
            got = await store.claim(conn, worker="bench-claim", limit=batch, lease_seconds=60)
            times.append((time.perf_counter() - started) * 1000)
            if len(got) < batch:
                raise RuntimeError(f"claim returned {len(got)} of {batch}: the backlog ran out")
            await store.complete(conn, got)
    return times


def claim_latency(dsn: str, claims: int, batch: int) -> dict[str, float]:
    times = asyncio.run(_claims(dsn, claims, batch))
    figures = {"claim p50 ms": percentile(times, 50), "claim p99 ms": percentile(times, 99)}
    p50, p99 = figures["claim p50 ms"], figures["claim p99 ms"]
    log(f"  claim of {batch}: p50 {p50:.2f}, p99 {p99:.2f} ms")
    return figures


def drain(dsn: str, events: int) -> dict[str, float]:
    """A real worker delivers `events` of the backlog; events/s from the first done to the
    events-th done, on the database's clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        mark: datetime = row[0]
        proc = launch_worker(dsn, "--processes", "2", "--batch-size", "100", "--concurrency", "10")
        try:
            deadline = time.monotonic() + 600
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM outbox_event WHERE status = 'done' AND done_at > %s",
                    [mark],
                ).fetchone()
                if row and row[0] >= events:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{events:,} events not delivered in 600 s")
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(60)
        row = conn.execute(
            "SELECT extract(epoch FROM max(d) - min(d))::float8 FROM ("
            " SELECT done_at AS d FROM outbox_event WHERE status = 'done' AND done_at > %s"
            " ORDER BY done_at LIMIT %s) s",
            [mark, events],
        ).fetchone()
    assert row is not None and row[0]
    rate = (events - 1) / row[0]
    log(f"  drain of {events:,}: {rate:,.0f} events/s")
    return {"drain events/s": rate}


def measure(
    stage: str, dsn: str, args: argparse.Namespace, dead_ids: tuple[int, int]
) -> dict[str, float]:
    log(f"measuring {stage}")
    figures = reads(dsn, args.repeat, dead_ids)
    figures |= claim_latency(dsn, args.claims, args.claim_batch)
    # The drain needs a backlog of its own on the small table; the big one has plenty.
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM outbox_event WHERE status = 'pending' LIMIT %s) s",
            [args.drain * 2],
        ).fetchone()
    if row is not None and row[0] < args.drain * 2:
        load(dsn, PENDING, 50_000_000, args.drain * 2)
        settle(dsn)
    figures |= drain(dsn, args.drain)
    return figures


def dead_range(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT min(id), max(id) FROM outbox_event WHERE status = 'dead'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def sizes(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pg_size_pretty(pg_table_size('outbox_event')), "
            "pg_size_pretty(pg_indexes_size('outbox_event'))"
        ).fetchone()
    assert row is not None
    return {"table": row[0], "indexes": row[1]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000,000 pending, 100,000 dead")
    parser.add_argument("--pending", type=int, default=10_000_000)
    parser.add_argument("--dead", type=int, default=1_000_000)
    parser.add_argument("--small-pending", type=int, default=10_000)
    parser.add_argument("--small-dead", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=7, help="calls per read; median reported")
    parser.add_argument(
        "--claims",
        type=int,
        default=60,
        help="claims timed per stage (p99 of 60 is about their max)",
    )
    parser.add_argument("--claim-batch", type=int, default=100)
    parser.add_argument("--drain", type=int, default=50_000, help="events the worker delivers")
    args = parser.parse_args(argv)
    if args.quick:
        args.pending, args.dead, args.repeat, args.drain = 1_000_000, 100_000, 5, 20_000

    bench = BenchDatabase()
    figures: dict[str, Any] = {"server": bench.where, "stages": {}, "load": {}}
    try:
        if bench.cluster is not None:
            with psycopg.connect(bench.admin_dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
                conn.execute("SELECT pg_reload_conf()")
            figures["server"] += ", max_wal_size 8GB"

        small = bench.fresh()
        load(small, DEAD, 1, args.small_dead, scale=args.small_dead / 1000)
        load(small, PENDING, 1, args.small_pending)
        settle(small)
        figures["stages"]["small"] = measure("small", small, args, dead_range(small))
        figures["sizes_small"] = sizes(small)
        bench.drop(small)

        big = bench.fresh()
        log(f"loading {args.dead:,} dead events")
        figures["load"]["dead_s"] = load(big, DEAD, 1, args.dead, scale=args.dead / 1000)
        figures["load"]["small_pending_s"] = load(big, PENDING, 1, args.small_pending)
        figures["load"]["settle_dead_heavy_s"] = settle(big)
        dead_ids = dead_range(big)
        figures["stages"]["dead-heavy"] = measure("dead-heavy", big, args, dead_ids)

        log(f"loading {args.pending - args.small_pending:,} more pending events")
        figures["load"]["pending_s"] = load(
            big, PENDING, args.small_pending + 1, args.pending - args.small_pending
        )
        figures["load"]["settle_big_s"] = settle(big)
        figures["sizes_big"] = sizes(big)
        figures["stages"]["big"] = measure("big", big, args, dead_ids)
    finally:
        bench.close()

    report(figures, args)
    emit_json("big_tables", figures)
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    small, heavy, big = (figures["stages"][s] for s in ("small", "dead-heavy", "big"))
    print(
        f"\nbig tables: {args.pending:,} pending + {args.dead:,} dead (big) against "
        f"{args.small_pending:,} + {args.small_dead:,} (small) and {args.small_pending:,} + "
        f"{args.dead:,} (dead-heavy); {figures['server']}"
    )
    print(f"table/indexes: small {figures['sizes_small']}, big {figures['sizes_big']}")
    header = f"{'figure':<36}{'small':>11}{'dead-heavy':>12}{'big':>11}{'big/small':>11}"
    print(header + f"{'big/heavy':>11}  within 2x of small")
    for key in small:
        ratio = big[key] / small[key]
        heavy_ratio = big[key] / heavy[key]
        # For a rate, higher is better: the big table is worse when the ratio is below 1.
        worse = 1 / ratio if key.endswith("/s") else ratio
        print(
            f"{key:<36}{small[key]:>11.2f}{heavy[key]:>12.2f}{big[key]:>11.2f}{ratio:>11.2f}"
            f"{heavy_ratio:>11.2f}  {'yes' if worse <= 2 else 'NO'}"
        )
    print(
        "ms unless named; big/heavy isolates the pending backlog's effect (same dead set on "
        "both). db status counts exactly up to 10,000 events a state, then estimates."
    )


if __name__ == "__main__":
    main()
