"""Delivery controls' costs: the drain with ordering per aggregate against the plain drain, and
publish with and without the payload checksum and a backlog limit, all in one run.

    python -m bench ordering [--quick] [--aggregates 10000] [--per-aggregate 5]
                             [--processes 2] [--batch 1000] [--repeat 3]

Drain: aggregates x per-aggregate no-op events, published interleaved (event k of every
aggregate, then event k+1), drained by `dispatchbox worker` once with a plain handler
(bench.apps:dispatcher, the default claim) and once with ordering="block"
(bench.apps:ordered, worker_claim_ordered); the ratio is ordered / plain events per second.
Each ordered run checks that every aggregate's events were done in id order.

Publish: publish_many of --publish events (binary COPY) and --single single publishes, each
with the checksum as shipped and with the checksum left out (the function replaced by a
constant), and single publishes with a backlog limit set on their type (the estimate read at
most once a second) against none. Ratios are with / without.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import (
    BenchDatabase,
    checkpoint,
    db_clock,
    emit_json,
    median_of,
    print_table,
    seconds_until_last_done,
    wait_drained,
    worker,
)
from dispatchbox.delivery import backpressure
from dispatchbox.publish import publish, publish_many

# The module (the package's name "publish" is the function): its checksum function is swapped.
publish_module = importlib.import_module("dispatchbox.publish")


def seed(dsn: str, *, aggregates: int, per: int, event_type: str) -> Any:
    """aggregates x per pending events in one statement, interleaved by aggregate; returns the
    database clock after the commit (the drain's start)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) "
            "SELECT 'bench', (g %% %(a)s)::text, %(t)s, jsonb_build_object('n', g) "
            "FROM generate_series(0, %(n)s - 1) g",
            {"a": aggregates, "t": event_type, "n": aggregates * per},
        )
        committed = db_clock(conn)
        conn.execute("ANALYZE outbox_event")
    return committed


def in_order(dsn: str) -> bool:
    """Every aggregate's events completed in id order (done_at never decreases with id)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT done_at < lag(done_at) OVER w AS back FROM outbox_event"
            " WINDOW w AS (PARTITION BY aggregate_id ORDER BY id)) x WHERE back"
        ).fetchone()
    return row is not None and row[0] == 0


def drain(db: BenchDatabase, args: argparse.Namespace, *, ordered: bool) -> dict[str, Any]:
    dsn = db.fresh()
    events = args.aggregates * args.per_aggregate
    try:
        flags = ("--processes", str(args.processes), "--batch-size", str(args.batch),
                 "--concurrency", "10")  # fmt: skip
        app = "bench.apps:ordered" if ordered else "bench.apps:dispatcher"
        with worker(dsn, *flags, app=app):
            checkpoint(dsn)
            start = seed(
                dsn,
                aggregates=args.aggregates,
                per=args.per_aggregate,
                event_type="bench.ordered" if ordered else "bench.noop",
            )
            wait_drained(dsn)
            seconds = seconds_until_last_done(dsn, start)
        return {
            "scenario": "drain, ordering=block" if ordered else "drain, no ordering",
            "aggregates": args.aggregates,
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "in_order": in_order(dsn) if ordered else None,
        }
    finally:
        db.drop(dsn)


def _event(i: int) -> dict[str, Any]:
    return {
        "aggregate_type": "order",
        "aggregate_id": str(i),
        "event_type": "order.created",
        "payload": {"order_id": i, "total": 1999, "currency": "EUR", "lines": [1, 2, 3]},
    }


class _NoChecksum:
    """publish as it was before checksums: the compact encoding alone, no hash."""

    @staticmethod
    def encode(payload: Any) -> tuple[str, str]:
        return publish_module._json("payload", payload), ""


def _timed(dsn: str, work: Callable[[psycopg.Connection[Any]], None]) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds of one run (the CPU figure is the publisher's
    own cost, steadier than the wall clock on a busy host)."""
    with psycopg.connect(dsn) as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        work(conn)
        conn.commit()
        return time.perf_counter() - wall, time.process_time() - cpu


def publish_costs(db: BenchDatabase, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each variant once per round, the variants of a pair alternating within the round, so that
    drift on a shared host falls on both; each row is its median round."""
    dsn = db.fresh()
    real = vars(publish_module)["checksum"]
    events = [_event(i) for i in range(args.publish)]

    def many(conn: psycopg.Connection[Any]) -> None:
        publish_many(conn, events)

    def single(conn: psycopg.Connection[Any]) -> None:
        for i in range(args.single):
            publish(conn, **_event(i))

    def with_checksum(on: bool) -> None:
        setattr(publish_module, "checksum", real if on else _NoChecksum)  # noqa: B010

    def with_limit(on: bool) -> None:
        backpressure.clear()
        if on:
            backpressure.set_backlog_limit("order.created", 10**9)

    variants: list[tuple[str, Callable[[psycopg.Connection[Any]], None], int, Any, bool]] = [
        ("publish_many, with checksum", many, args.publish, with_checksum, True),
        ("publish_many, without checksum", many, args.publish, with_checksum, False),
        ("publish (one transaction), with checksum", single, args.single, with_checksum, True),
        ("publish (one transaction), without checksum", single, args.single, with_checksum, False),
        ("publish (one transaction), backlog limit set", single, args.single, with_limit, True),
        ("publish (one transaction), no backlog limit", single, args.single, with_limit, False),
    ]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in variants}
    try:
        for _ in range(max(1, args.repeat)):
            for name, work, _n, setup, on in variants:
                setup(on)
                try:
                    runs[name].append(_timed(dsn, work))
                finally:
                    with_checksum(True)
                    backpressure.clear()
    finally:
        db.drop(dsn)
    rows = []
    for name, _work, n, _setup, _on in variants:
        wall = sorted(w for w, _ in runs[name])[len(runs[name]) // 2]
        cpu = sorted(c for _, c in runs[name])[len(runs[name]) // 2]
        rows.append({"scenario": name, "events": n, "seconds": wall, "events_per_s": n / wall,
                     "client_cpu_us_per_event": cpu / n * 1e6})  # fmt: skip
    return rows


def _ratio(rows: list[dict[str, Any]], a: str, b: str, key: str = "seconds") -> float:
    by = {r["scenario"]: float(r[key]) for r in rows}
    return by[a] / by[b]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer events and one round")
    parser.add_argument("--aggregates", type=int, default=10_000)
    parser.add_argument("--per-aggregate", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--publish", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--publish-only", action="store_true", help="skip the drains")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_aggregate, args.publish, args.single = 2, 20_000, 1000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    db = BenchDatabase()
    try:
        drain_rows: list[dict[str, Any]] = []
        ratio = float("nan")
        if not args.publish_only:
            drains = []
            for _ in range(max(1, args.repeat)):  # alternate, so drift hits both alike
                drains.append((drain(db, args, ordered=False), drain(db, args, ordered=True)))
            plain = median_of([p for p, _ in drains])
            ordered = median_of([o for _, o in drains])
            ordered["in_order"] = all(o["in_order"] for _, o in drains)
            ratio = ordered["events_per_s"] / plain["events_per_s"]
            drain_rows = [plain, ordered]
            print_table(f"ordering ({db.where})", drain_rows)
            print(f"ordered / plain drain rate: {ratio:.2f} (target >= 0.50)", flush=True)
        publishing = publish_costs(db, args)
    finally:
        db.close()
    print_table("publish costs", publishing)
    ratios = {"ordered_over_plain_drain": ratio}
    pairs = {
        "publish_many_checksum": ("publish_many, with checksum", "publish_many, without checksum"),
        "publish_checksum": (
            "publish (one transaction), with checksum",
            "publish (one transaction), without checksum",
        ),
        "publish_backlog_limit": (
            "publish (one transaction), backlog limit set",
            "publish (one transaction), no backlog limit",
        ),
    }
    for name, (a, b) in pairs.items():
        ratios[f"{name}_wall_ratio"] = _ratio(publishing, a, b)
        ratios[f"{name}_client_cpu_ratio"] = _ratio(publishing, a, b, "client_cpu_us_per_event")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    result = {"where": db.where, "drain": drain_rows, "publish": publishing, **ratios}
    emit_json("ordering", result)
    return result


if __name__ == "__main__":
    main()
