"""Circuit breakers under load (bench/breaker_apps.py: destinations alpha, beta, gamma, each a
1 ms downstream call; gamma goes down and comes back).

    python -m bench breakers [--quick] [--only three|recovery|outage] [--events N]
                             [--processes 2] [--outage-seconds 300] [--outage-events 100000]

- three: one destination down among three. The same seeded mix (N events per destination,
  interleaved) drained with all three up, then with gamma down: alpha's and beta's rates with
  gamma down against all up (target: at least 0.9), and the attempts gamma's events started
  after its breaker opened (target: 0).
- recovery: gamma down with a backlog, its breaker open, probes every probe interval; then the
  destination recovers. From the recovery to the breaker closed, to the first event delivered,
  and to full speed (the first 0.25 s in which gamma's deliveries reach 90% of its rate when
  all is well), in probe intervals (target: under two).
- outage: gamma down for --outage-seconds with --outage-events waiting (the cool-down growing
  from 1 s to 30 s), then back: dead events (target: 0), all delivered, the drain after recovery.
  --quick: 15 s and 10,000 events.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import BenchDatabase, db_clock, emit_json, print_table, worker

APP = "bench.breaker_apps:dispatcher"


def seed_mix(dsn: str, per_type: int, types: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) "
            "SELECT 'bench', g::text, (%s::text[])[1 + g %% %s], '{}'::jsonb "
            "FROM generate_series(0, %s - 1) g",
            [types, len(types), per_type * len(types)],
        )
        conn.execute("ANALYZE outbox_event")


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)


def count(dsn: str, where: str, params: list[Any] | None = None) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM outbox_event WHERE {where}", params).fetchone()
    return int(row[0]) if row else 0


def rates(dsn: str, types: list[str]) -> dict[str, float]:
    """Events per second of each type: its count over its first-created to last-done span."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in types:
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM max(done_at) - min(created_at)) "
                "FROM outbox_event WHERE event_type = %s AND status = 'done'",
                [t],
            ).fetchone()
            assert row is not None and row[1]
            out[t] = row[0] / float(row[1])
    return out


def breaker_row(dsn: str, name: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM outbox_breaker WHERE destination = %s", [name])
        cols = [c.name for c in cur.description or []]
        row = cur.fetchone()
    return dict(zip(cols, row, strict=True)) if row else {}


def three(db: BenchDatabase, control: Path, args: argparse.Namespace) -> dict[str, Any]:
    types = ["bench.alpha", "bench.beta", "bench.gamma"]
    wargs = ("--processes", str(args.processes), "--batch-size", "200", "--concurrency", "10")
    env = {"DBX_CONTROL_DIR": str(control), "DBX_PROBE_INTERVAL": "30"}
    # All three up.
    dsn = db.fresh()
    with worker(dsn, *wargs, app=APP, env=env):
        seed_mix(dsn, args.events, types)
        wait_for(lambda: count(dsn, "status <> 'done'") == 0, 600, "all up drained")
    up = rates(dsn, types)
    db.drop(dsn)
    # Gamma down.
    dsn = db.fresh()
    (control / "gamma.down").touch()
    try:
        with worker(dsn, *wargs, app=APP, env=env):
            seed_mix(dsn, args.events, types)
            wait_for(
                lambda: count(dsn, "status <> 'done' AND event_type <> 'bench.gamma'") == 0,
                600,
                "alpha and beta drained",
            )
    finally:
        (control / "gamma.down").unlink()
    down = rates(dsn, types[:2])
    opened_at = breaker_row(dsn, "gamma")["opened_at"]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE x.started_at > %s), count(*) FROM outbox_event_error x "
            "JOIN outbox_event e ON e.id = x.event_id WHERE e.event_type = 'bench.gamma'",
            [opened_at],
        ).fetchone()
        gamma = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), "
            "count(*) FILTER (WHERE status = 'dead') FROM outbox_event "
            "WHERE event_type = 'bench.gamma'"
        ).fetchone()
    assert row is not None and gamma is not None
    db.drop(dsn)
    return {
        "scenario": "three",
        "events_per_destination": args.events,
        "alpha_up_per_s": up["bench.alpha"],
        "alpha_down_per_s": down["bench.alpha"],
        "alpha_ratio": down["bench.alpha"] / up["bench.alpha"],
        "beta_up_per_s": up["bench.beta"],
        "beta_down_per_s": down["bench.beta"],
        "beta_ratio": down["bench.beta"] / up["bench.beta"],
        "gamma_attempts_before_open": row[1] - row[0],
        "gamma_attempts_after_open": row[0],
        "gamma_pending": gamma[0],
        "gamma_dead": gamma[1],
    }


def recovery(db: BenchDatabase, control: Path, args: argparse.Namespace) -> dict[str, Any]:
    probe = args.probe_interval
    wargs = ("--processes", str(args.processes), "--batch-size", "200", "--concurrency", "10")
    env = {"DBX_CONTROL_DIR": str(control), "DBX_PROBE_INTERVAL": str(probe)}
    n = args.events
    dsn = db.fresh()
    with worker(dsn, *wargs, app=APP, env=env):
        # Gamma's rate when all is well, in this run.
        seed_mix(dsn, n, ["bench.gamma"])
        wait_for(lambda: count(dsn, "status <> 'done'") == 0, 600, "baseline drained")
        baseline = rates(dsn, ["bench.gamma"])["bench.gamma"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM outbox_event")
        (control / "gamma.down").touch()
        seed_mix(dsn, n, ["bench.gamma"])
        wait_for(lambda: breaker_row(dsn, "gamma").get("state") == "open", 60, "gamma opens")
        time.sleep(probe * 2.5)  # a few failed probes
        with psycopg.connect(dsn) as conn:
            recovered_at = db_clock(conn)
        (control / "gamma.down").unlink()
        wait_for(lambda: count(dsn, "status <> 'done'") == 0, 600, "recovered drain")
    with psycopg.connect(dsn) as conn:
        closed_at = breaker_row(dsn, "gamma")["closed_at"]
        done = [
            float(r[0])
            for r in conn.execute(
                "SELECT extract(epoch FROM done_at - %s) FROM outbox_event "
                "WHERE done_at > %s ORDER BY done_at",
                [recovered_at, recovered_at],
            ).fetchall()
        ]
    db.drop(dsn)
    bucket = 0.25
    full_speed = None
    counts: dict[int, int] = {}
    for t in done:
        counts[int(t / bucket)] = counts.get(int(t / bucket), 0) + 1
    for b in sorted(counts):
        if counts[b] / bucket >= 0.9 * baseline:
            full_speed = (b + 1) * bucket
            break
    closed = (closed_at - recovered_at).total_seconds()
    return {
        "scenario": "recovery",
        "probe_interval_s": probe,
        "baseline_per_s": baseline,
        "to_closed_s": closed,
        "to_first_done_s": done[0] if done else None,
        "to_full_speed_s": full_speed,
        "full_speed_in_probe_intervals": None if full_speed is None else full_speed / probe,
        "drain_after_recovery_s": done[-1] if done else None,
    }


def outage(db: BenchDatabase, control: Path, args: argparse.Namespace) -> dict[str, Any]:
    seconds, n = args.outage_seconds, args.outage_events
    wargs = ("--processes", str(args.processes), "--batch-size", "500", "--concurrency", "10")
    env = {
        "DBX_CONTROL_DIR": str(control),
        "DBX_PROBE_INTERVAL": "1",
        "DBX_MAX_COOLDOWN": "4" if args.quick else "30",
    }
    dsn = db.fresh()
    (control / "gamma.down").touch()
    with worker(dsn, *wargs, app=APP, env=env):
        started = time.monotonic()
        seed_mix(dsn, n, ["bench.gamma"])
        wait_for(lambda: breaker_row(dsn, "gamma").get("state") == "open", 60, "gamma opens")
        while time.monotonic() - started < seconds:
            time.sleep(1)
        row = breaker_row(dsn, "gamma")
        during = {
            "pending": count(dsn, "status = 'pending'"),
            "dead": count(dsn, "status = 'dead'"),
        }
        with psycopg.connect(dsn) as conn:
            recovered_at = db_clock(conn)
        (control / "gamma.down").unlink()
        back = time.monotonic()
        wait_for(lambda: count(dsn, "status <> 'done'") == 0, 3600, "drained after recovery", 0.5)
        drained = time.monotonic() - back
    with psycopg.connect(dsn) as conn:
        r = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'dead'), count(*) FILTER (WHERE status = "
            "'done'), extract(epoch FROM max(done_at) - %s) FROM outbox_event",
            [recovered_at],
        ).fetchone()
    assert r is not None
    db.drop(dsn)
    return {
        "scenario": "outage",
        "outage_s": seconds,
        "events": n,
        "breaker_transitions": row["transitions"],
        "pending_at_recovery": during["pending"],
        "dead_at_recovery": during["dead"],
        "dead_at_end": r[0],
        "done_at_end": r[1],
        "drain_after_recovery_s": float(r[2]) if r[2] is not None else drained,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench breakers")
    parser.add_argument("--quick", action="store_true", help="small runs (CI smoke)")
    parser.add_argument("--only", choices=["three", "recovery", "outage"], default=None)
    parser.add_argument("--events", type=int, default=None, help="events per destination")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--outage-seconds", type=float, default=None)
    parser.add_argument("--outage-events", type=int, default=None)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 3000 if args.quick else 20_000
    if args.outage_seconds is None:
        args.outage_seconds = 15.0 if args.quick else 300.0
    if args.outage_events is None:
        args.outage_events = 10_000 if args.quick else 100_000
    db = BenchDatabase()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            control = Path(tmp)
            for name, run in (("three", three), ("recovery", recovery), ("outage", outage)):
                if args.only in (None, name):
                    rows.append(run(db, control, args))
                    print_table(f"breakers: {name} ({db.where})", [rows[-1]])
    finally:
        db.close()
    result = {"where": db.where, "rows": rows}
    emit_json("breakers", result)
    return result


if __name__ == "__main__":
    main()
