"""Big tables: claim latency, drain rate, `db status` and the dead-letter reads on an outbox of
10,000,000 pending and 1,000,000 dead events, beside the same figures on a small outbox.

    .venv/bin/python -m bench big_tables [--quick] [--pending 10000000] [--dead 1000000]

Three outboxes in one run, each its own database, measured the same way:

* small:       10,000 pending + 1,000 dead events (the reference);
* dead-heavy:  10,000 pending + the full dead set (what the dead-letter reads cost because there
               are many dead events, whatever the pending backlog);
* big:         the full pending backlog + the full dead set.

Loading is INSERT ... SELECT generate_series in 1,000,000-row statements with a pause between
them (the machine is shared), then a fold of the dead-letter summary, VACUUM ANALYZE of every
table, a wait until autovacuum has left the database, and a CHECKPOINT. Then --rounds rounds take
turns between the three (small, dead-heavy, big, small, ...), so that the load of the shared
machine weighs on each alike. In a round, on each outbox:

* ``db status``: outbox_status() as `dispatchbox db status` runs it (exact counts up to 10,000
  events a state, planner estimates above), and the exact ``health`` query (the outbox_health
  view) beside it; median of --repeat calls on an open pooled connection (as the API and the
  console hold one; the CLI adds a connection's set-up, the same on any table).
* dead-letter reads through OutboxRepository, as the CLI, API and console make them: stats (what
  `dead-events stats` shows: totals and every grouping), stats by error fingerprint only, count,
  the first list page, a keyset page deep in the ids.
* claim latency: --claims / --rounds claims of --claim-batch events (data.worker.claim, then
  complete, as a worker does); p50 and p99 over every round's claims.
* drain: a real `dispatchbox worker` (--processes 2) delivers --drain no-op events from the
  backlog; the rate runs from the first to the last of them done (database clock), so process
  start-up is not in it. The small outboxes get their pending events topped up first, so they
  keep their size.

Each figure is the median over the rounds, printed beside the small outbox's with their ratio
(target: within 2x), then one JSON line. --quick: 1,000,000 pending and 100,000 dead,
10,000-event drains (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from bench.common import BenchDatabase, checkpoint, emit_json, launch_worker, percentile
from dispatchbox import OutboxRepository
from dispatchbox.data import queries
from dispatchbox.data import worker as store
from dispatchbox.outbox_status import outbox_status

CHUNK = 1_000_000
AUTOVACUUM_WAIT_S = 300  # settle() waits at most this long for autovacuum to leave


@dataclass(frozen=True)
class Stage:
    name: str
    dsn: str
    pending: int  # the pending backlog it keeps between measurements
    dead_ids: tuple[int, int]


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
    """A fold of the dead-letter summary's deltas (migration 0012: a transaction folds at most
    once, so the bulk load's own deltas wait for the next death's fold, which a live outbox
    keeps having), VACUUM ANALYZE of every table (what autovacuum does on a live database), a
    wait until no autovacuum worker is left in the database, and a checkpoint; seconds.

    Every table: the fold deletes its deltas, and until a vacuum truncates outbox_dead_delta
    every summary read scans its empty pages (1,000,000 folded deltas: 10,310 pages, 5-9 ms a
    read instead of 0.8 ms). The first version vacuumed four named tables and left that one to
    autovacuum, which was busy with the 3 GB outbox: the big outbox's summary reads came out
    3-4x the dead-heavy one's with the same dead events (2026-12-04)."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT outbox_dead_summary_fold()")
        conn.execute("VACUUM ANALYZE")
        wait_autovacuum(conn, [conn.info.dbname])
    checkpoint(dsn)
    return time.perf_counter() - started


def wait_autovacuum(conn: psycopg.Connection[Any], names: list[str]) -> None:
    """Wait (at most AUTOVACUUM_WAIT_S) until no autovacuum worker runs in these databases: one
    still vacuuming a freshly loaded outbox would share the 2 cores with what is measured."""
    deadline = time.monotonic() + AUTOVACUUM_WAIT_S
    while time.monotonic() < deadline:
        busy = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'autovacuum worker' AND datname = ANY(%s)",
            (names,),
        ).fetchone()
        if busy is None or busy[0] == 0:
            return
        time.sleep(1)
    log(f"  autovacuum still busy in {', '.join(names)} after {AUTOVACUUM_WAIT_S} s; measuring")


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


def claim_times(dsn: str, claims: int, batch: int) -> list[float]:
    times = asyncio.run(_claims(dsn, claims, batch))
    p50, p99 = percentile(times, 50), percentile(times, 99)
    log(f"  {claims} claims of {batch}: p50 {p50:.2f}, p99 {p99:.2f} ms")
    return times


def drain(dsn: str, events: int) -> float:
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
    rate = (events - 1) / float(row[0])
    log(f"  drain of {events:,}: {rate:,.0f} events/s")
    return rate


def ensure_pending(dsn: str, want: int) -> None:
    """At least ``want`` pending events: the small outbox gets back what claims and drains took,
    so that it stays small and the big one stays big."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM outbox_event WHERE status = 'pending' LIMIT %s) s",
            [want],
        ).fetchone()
    have = int(row[0]) if row else 0
    if have < want:
        load(dsn, PENDING, 50_000_000, want - have)


def measure_round(
    stage: Stage, args: argparse.Namespace, samples: dict[str, dict[str, list[float]]]
) -> None:
    """One round on one stage: every read, the claims, the drain; appended to ``samples``."""
    log(f"measuring {stage.name}")
    got = samples.setdefault(stage.name, {})
    for key, value in reads(stage.dsn, args.repeat, stage.dead_ids).items():
        got.setdefault(key, []).append(value)
    claims = args.claims // args.rounds
    ensure_pending(stage.dsn, stage.pending + claims * args.claim_batch + args.drain)
    got.setdefault("claim ms", []).extend(claim_times(stage.dsn, claims, args.claim_batch))
    got.setdefault("drain events/s", []).append(drain(stage.dsn, args.drain))


def summary(got: dict[str, list[float]]) -> dict[str, float]:
    """Median of the rounds' medians per read; p50 and p99 of every claim; median drain rate."""
    out = {k: statistics.median(v) for k, v in got.items() if k not in ("claim ms",)}
    out.pop("drain events/s")
    out["claim p50 ms"] = percentile(got["claim ms"], 50)
    out["claim p99 ms"] = percentile(got["claim ms"], 99)
    out["drain events/s"] = statistics.median(got["drain events/s"])
    return out


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
    parser.add_argument("--rounds", type=int, default=3, help="turns taken between the outboxes")
    parser.add_argument("--repeat", type=int, default=5, help="calls per read and round")
    parser.add_argument(
        "--claims", type=int, default=150, help="claims timed per outbox, over all rounds"
    )
    parser.add_argument("--claim-batch", type=int, default=100)
    parser.add_argument(
        "--drain", type=int, default=30_000, help="events the worker delivers, per round"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.pending, args.dead, args.drain = 1_000_000, 100_000, 10_000

    bench = BenchDatabase()
    figures: dict[str, Any] = {"server": bench.where, "stages": {}, "load": {}}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        if bench.cluster is not None:
            with psycopg.connect(bench.admin_dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
                conn.execute("SELECT pg_reload_conf()")
            figures["server"] += ", max_wal_size 8GB"
        shapes = [
            ("small", args.small_pending, args.small_dead),
            ("dead-heavy", args.small_pending, args.dead),
            ("big", args.pending, args.dead),
        ]
        stages = []
        for name, pending, dead in shapes:
            dsn = bench.fresh()
            log(f"loading {name}: {pending:,} pending + {dead:,} dead")
            started = time.perf_counter()
            load(dsn, DEAD, 1, dead, scale=dead / 1000)
            load(dsn, PENDING, 1, pending)
            figures["load"][f"{name}_s"] = time.perf_counter() - started
            figures["load"][f"{name}_settle_s"] = settle(dsn)
            figures[f"sizes_{name}"] = sizes(dsn)
            stages.append(Stage(name, dsn, pending, dead_range(dsn)))
        # Rounds take turns between the outboxes, so that the machine's load (shared with other
        # work) weighs on each alike and the ratios compare figures measured minutes apart.
        with psycopg.connect(bench.admin_dsn, autocommit=True) as conn:
            wait_autovacuum(
                conn, [str(psycopg.conninfo.conninfo_to_dict(s.dsn)["dbname"]) for s in stages]
            )
        for round_no in range(1, args.rounds + 1):
            log(f"round {round_no} of {args.rounds}")
            for stage in stages:
                measure_round(stage, args, samples)
        figures["stages"] = {name: summary(got) for name, got in samples.items()}
        with open("/proc/loadavg") as f:
            figures["loadavg_after"] = f.read().split()[:3]
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
        "both). db status counts exactly up to 10,000 events a state, then estimates. Load "
        f"average after the run: {' '.join(figures['loadavg_after'])} (2 cores, shared)."
    )


if __name__ == "__main__":
    main()
