"""Built-in destinations: relay throughput against the plain client library, and idle latency.

python -m bench destinations [--events 100000] [--webhook-events 5000] [--quick]
                             [--only rabbitmq,nats,redis,webhook] [--processes 1] [--samples 200]

Per destination, in one run:
- plain client: the same messages (the envelope bodies, ids and headers the destination sends)
  published by the client library in a tight loop, each window of 500 confirmed by the broker
  (RabbitMQ publisher confirms, JetStream acks, a Redis pipeline's replies, HTTP answers);
- relay: the same number of events seeded in the outbox and relayed by `dispatchbox worker`
  with `dispatcher.route("relay.*", to=...)`, from commit to the last event marked done (done
  only after the broker confirmed it); the broker's own count is checked afterwards;
- ratio = relay events/s / plain events/s (target: at least 0.8);
- the webhook runs fewer events (--webhook-events): its receiver, uvicorn in one process, takes
  a few hundred requests a second at best, so 100,000 would take most of an hour;
- idle latency: one event at a time, from the publishing commit to its done_at (the broker's
  ack plus the worker's completion write: an upper bound of commit-to-ack), p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.common import (
    BenchDatabase,
    checkpoint,
    emit_json,
    percentile,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
    worker,
)
from bench.destination_kinds import EVENT_TYPE, KINDS, SECRET, Kind, WebhookSink
from dispatchbox import OutboxEvent, publish
from dispatchbox.destinations.base import envelope

APP = "bench.destinations_app:dispatcher"


def messages(n: int) -> list[tuple[OutboxEvent, bytes]]:
    now = datetime.now(UTC)
    out = []
    for i in range(1, n + 1):
        event = OutboxEvent(
            id=i,
            aggregate_type="bench",
            aggregate_id=str(i),
            event_type=EVENT_TYPE,
            payload={"n": i},
            created_at=now,
        )
        out.append((event, envelope(event)))
    return out


def run_kind(
    db: BenchDatabase, kind: Kind, *, events: int, processes: int, samples: int
) -> dict[str, Any]:
    kind.setup()
    env = {
        "DBX_DEST": kind.name,
        "DBX_DEST_URL": kind.url(),
        "DBX_DEST_TARGET": kind.target("r"),
        "DBX_DEST_SECRET": SECRET,
    }
    args = ("--processes", str(processes), "--batch-size", "1000", "--concurrency", "10")
    try:
        msgs = messages(events)
        if isinstance(kind, WebhookSink):
            kind.mark("p")
        started = time.perf_counter()
        asyncio.run(kind.plain(msgs))
        plain_s = time.perf_counter() - started
        plain_count = kind.count("p")
        del msgs

        dsn = db.fresh()
        try:
            with worker(dsn, *args, app=APP, env=env):
                if isinstance(kind, WebhookSink):
                    kind.mark("r")
                checkpoint(dsn)
                committed = seed(dsn, events, event_type=EVENT_TYPE)
                wait_drained(dsn, timeout=1800)
            relay_s = seconds_until_last_done(dsn, committed)
            relay_count = kind.count("r")
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'done'), max(attempts) "
                    "FROM outbox_event"
                ).fetchone()
            done, max_attempts = row or (0, 0)
        finally:
            db.drop(dsn)

        latency = idle_latency(db, env, samples=samples)
    finally:
        kind.teardown()
    plain_rate, relay_rate = events / plain_s, events / relay_s
    return {
        "destination": kind.name,
        "events": events,
        "plain_events_per_s": round(plain_rate),
        "relay_events_per_s": round(relay_rate),
        "ratio": round(relay_rate / plain_rate, 2),
        "broker_count_plain": plain_count,
        "broker_count_relay": relay_count,
        "relay_done": done,
        "relay_max_attempts": max_attempts,
        "latency_p50_ms": round(latency[0], 1),
        "latency_p99_ms": round(latency[1], 1),
        "latency_samples": samples,
    }


def idle_latency(db: BenchDatabase, env: dict[str, str], *, samples: int) -> tuple[float, float]:
    """Publish one event at a time into an idle worker; commit to done_at, p50 and p99 (ms)."""
    dsn = db.fresh()
    committed: dict[int, float] = {}
    try:
        with worker(dsn, "--processes", "1", "--poll-interval", "5", app=APP, env=env):
            with psycopg.connect(dsn) as conn:
                for i in range(samples):
                    event_id = publish(
                        conn, aggregate_type="probe", aggregate_id=str(i),
                        event_type=EVENT_TYPE, payload={"i": i},
                    )  # fmt: skip
                    conn.commit()
                    committed[event_id] = time.time()
                    time.sleep(0.03)
            wait_drained(dsn, timeout=60)
        with psycopg.connect(dsn) as conn:
            done = dict(
                conn.execute(
                    "SELECT id, extract(epoch FROM done_at)::float8 FROM outbox_event "
                    "WHERE status = 'done'"
                ).fetchall()
            )
    finally:
        db.drop(dsn)
    lat = [(done[i] - t) * 1000 for i, t in committed.items() if i in done]
    return percentile(lat, 50), percentile(lat, 99)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench destinations", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (100,000)")
    parser.add_argument(
        "--webhook-events", type=int, default=5_000, help="backlog for the webhook (5,000)"
    )
    parser.add_argument("--quick", action="store_true", help="10,000 events, 50 latency samples")
    parser.add_argument("--only", default=",".join(KINDS), help="comma-separated destinations")
    parser.add_argument("--processes", type=int, default=1, help="relay worker processes (1)")
    parser.add_argument("--samples", type=int, default=200, help="idle latency samples (200)")
    opts = parser.parse_args(argv if argv is not None else sys.argv[1:])
    events, samples = (10_000, 50) if opts.quick else (opts.events, opts.samples)
    hook_events = 1_000 if opts.quick else opts.webhook_events
    wanted = [k.strip() for k in opts.only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        parser.error(f"unknown destination(s): {', '.join(unknown)}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    db = BenchDatabase()
    rows = []
    try:
        for name in wanted:
            n = hook_events if name == "webhook" else events
            row = run_kind(db, KINDS[name](), events=n, processes=opts.processes, samples=samples)
            rows.append(row)
            print_table(f"destination {name}", [row])
    finally:
        db.close()
    print_table("destinations: relay vs plain client (target ratio >= 0.8)", rows)
    result = {"database": db.where, "processes": opts.processes, "rows": rows}
    emit_json("destinations", result)
    return result


if __name__ == "__main__":
    main()
