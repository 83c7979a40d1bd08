"""Redrive benchmark (issue 22): the canary's overhead, the adaptive pace's reaction to a failing
destination, and poison detection.

    .venv/bin/python -m bench redrive [--quick] [--rows 100000] [--repeat 3]

* **Canary overhead**: ``--rows`` dead events (two per aggregate) redriven by a plain
  ``redrive_dead_events`` (the engine of ``retry-batch --all-matching``) and by a canary
  operation (1% sample, whole aggregates, then promotion in order-preserving batches). The
  canary's sample is marked done by SQL between the two steps: what is timed is the redrive
  machinery, not handlers. Each run on a fresh database, seeded and VACUUM ANALYZEd.
* **Plain redrive with order kept vs before**: ``--rows`` dead events redriven by
  ``OutboxRepository.redrive_dead_events`` with its batches of ``redrive_plain_batch`` (which
  hold back the aggregates of held rows) and with the batch it ran before (one call of the SQL
  function ``redrive_dead_events``), the same loop otherwise, alternately, each on a fresh
  seeded database; median of ``--repeat``.
* **Adaptive pace vs a failing destination**: ``--pace-rows`` dead events redriven at top speed
  ``--rate`` into a real ``dispatchbox worker`` (2 processes) whose handler starts failing 4 s in
  and recovers ``--down`` seconds later. Figures: seconds from the failure to the first slow-down
  and to the pause, and events burned (redriven, then dead again) by the adaptive pace and by a
  fixed ``--rate`` over the same outage.
* **Poison detection**: one event whose handler calls ``os._exit`` among ``--poison-rows`` good
  ones, ``--max-crashes 3``, 2 s leases: crashes until dead, seconds from publish to dead, and
  how many good events got a crash attempt (none may go dead or lose an attempt).
* **The error-budget measure** (the ``dead_budget`` alert's query, ``alert_dead_burn_rate``):
  ``--budget-rows`` finished events (1,000,000) spread over a day, ``--budget-window-rows`` of
  them (and 1% dead) in its 5-minute window, a tenth of those delivered late. EXPLAIN ANALYZE
  execution time of the query (median of 5) against the reference: the same late/dead share
  counted over every finished row (what a measure without the time-bounded index scans costs).

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import BenchDatabase, emit_json, print_table, worker
from dispatchbox import OutboxRepository, publish_many
from dispatchbox.data import dead_letters, queries
from dispatchbox.filters import DeadEventFilter
from dispatchbox.redrive import RedriveService

SEED = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
    max_attempts, last_error, last_error_at, dead_at, created_at)
SELECT 'order', (g / 2)::text, %(event_type)s, jsonb_build_object('order_id', g), 'dead', 1, 1,
       'ConnectionError: downstream refused order ' || g, now(), now(),
       now() - interval '1 hour' + g * interval '1 millisecond'
  FROM generate_series(1, %(rows)s) g
"""


def _seed(dsn: str, rows: int, event_type: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED, {"rows": rows, "event_type": event_type})
        conn.execute("VACUUM ANALYZE outbox_event")
        conn.execute("VACUUM ANALYZE outbox_dead_fingerprint")


def _canary_run(db: BenchDatabase, rows: int) -> dict[str, float]:
    dsn = db.fresh()
    _seed(dsn, rows, "bench.noop")
    started = time.perf_counter()
    OutboxRepository(dsn).redrive_dead_events(DeadEventFilter(), actor="bench")
    plain = time.perf_counter() - started
    db.drop(dsn)

    dsn = db.fresh()
    _seed(dsn, rows, "bench.noop")
    svc = OutboxRepository(dsn).redrive()
    started = time.perf_counter()
    op = svc.start(DeadEventFilter(), actor="bench", canary=("percent", 1.0))
    sample = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:  # the sample delivered (not timed)
        conn.execute(
            "UPDATE outbox_event SET status = 'done', done_at = now() WHERE id = ANY(%s)",
            (op.canary_ids,),
        )
    started = time.perf_counter()
    done = svc.run(op.id)
    promote = time.perf_counter() - started
    assert done.phase == "completed" and done.redriven == rows, done
    db.drop(dsn)
    return {
        "plain_s": plain,
        "sample_s": sample,
        "promote_s": promote,
        "canary_s": sample + promote,
    }


def canary_overhead(db: BenchDatabase, rows: int, repeat: int) -> dict[str, Any]:
    runs = [_canary_run(db, rows) for _ in range(repeat)]
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["ratio"] = out["canary_s"] / out["plain_s"]
    return {"rows": rows, "repeat": repeat, **out}


def _function_batch(
    conn: psycopg.Connection[Any],
    flt: DeadEventFilter,
    *,
    actor: str,
    after_id: int,
    batch_size: int,
    held: set[str],
) -> dict[str, Any]:
    """A batch as the repository ran it before: one call of the SQL function (no held set)."""
    params = {**flt.params(), "actor": actor, "after_id": after_id, "batch_size": batch_size}
    row = queries.fetch_one(conn, "dead_redrive_batch", params)
    assert row is not None
    n = int(row["processed"])
    return {"picked": n + int(row["skipped"]), "processed": n, "last_id": row["last_id"]}


def plain_order_cost(db: BenchDatabase, rows: int, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"ordered_s": [], "before_s": []}
    for i in range(repeat * 2):
        kind = ("ordered_s", "before_s")[i % 2]
        dsn = db.fresh()
        _seed(dsn, rows, "bench.noop")
        started = time.perf_counter()
        # The same repository loop (audit, checksum report), only the batch statement differs.
        batch = dead_letters.redrive_batch
        if kind == "before_s":
            dead_letters.redrive_batch = _function_batch
        try:
            repo = OutboxRepository(dsn)
            n = repo.redrive_dead_events(DeadEventFilter(), actor="bench").processed
        finally:
            dead_letters.redrive_batch = batch
        runs[kind].append(time.perf_counter() - started)
        assert n == rows, (kind, n)
        db.drop(dsn)
    out = {k: statistics.median(v) for k, v in runs.items()}
    return {"rows": rows, "repeat": repeat, **out, "ratio": out["ordered_s"] / out["before_s"]}


def _outage_run(
    db: BenchDatabase, rows: int, rate: float, down: float, *, adaptive: bool
) -> dict[str, Any]:
    dsn = db.fresh()
    _seed(dsn, rows, "bench.downstream")
    flag = Path(tempfile.mkdtemp()) / "down"
    events: list[tuple[float, str]] = []
    svc = RedriveService(OutboxRepository(dsn).connection)
    op = svc.start(DeadEventFilter(), actor="bench", rate=rate, adaptive=adaptive)
    args = ("--processes", "2", "--concurrency", "16", "--poll-interval", "0.1")
    with worker(dsn, *args, env={"DBX_BENCH_DOWN": str(flag)}):
        thread = threading.Thread(
            target=svc.run, args=(op.id,), kwargs={"report": lambda line: events.append(
                (time.monotonic(), line))}, daemon=True)  # fmt: skip
        thread.start()
        time.sleep(4.0)
        flag.touch()
        failed_at = time.monotonic()
        time.sleep(down)
        flag.unlink()
        healed_at = time.monotonic()
        thread.join(600)
        finished_at = time.monotonic()
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'dead'),"
            " count(*) FILTER (WHERE status = 'done') FROM outbox_event"
        ).fetchone()
    db.drop(dsn)
    assert row is not None

    def first(word: str) -> float | None:
        hits = [t - failed_at for t, line in events if t >= failed_at and word in line]
        return round(hits[0], 2) if hits else None

    return {
        "pace": "adaptive" if adaptive else "fixed",
        "top_rate": rate,
        "down_s": down,
        "slowed_after_s": first("slowed") or first("paused"),
        "paused_after_s": first("paused"),
        "burned": int(row[0]),
        "delivered": int(row[1]),
        "finished_after_heal_s": round(finished_at - healed_at, 1),
    }


def poison(db: BenchDatabase, good: int) -> dict[str, Any]:
    dsn = db.fresh()
    events = [
        {"aggregate_type": "order", "aggregate_id": str(i), "event_type": "bench.poison",
         "payload": {"poison": i == good // 2}, "max_attempts": 1}
        for i in range(good + 1)
    ]  # fmt: skip
    args = ("--processes", "2", "--lease-seconds", "2", "--handler-timeout", "1.5",
            "--reaper-interval", "0.3", "--max-crashes", "3", "--crash-backoff", "0.2")  # fmt: skip
    with worker(dsn, *args):
        started = time.monotonic()
        with psycopg.connect(dsn) as conn:
            ids = publish_many(conn, events)
            conn.commit()
        bad = ids[good // 2]
        deadline = started + 300
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT (SELECT status FROM outbox_event WHERE id = %s),"
                    " (SELECT count(*) FROM outbox_event WHERE status = 'done')",
                    (bad,),
                ).fetchone()
                if row is not None and row[0] == "dead" and row[1] == good:
                    break
                time.sleep(0.05)
            seconds = time.monotonic() - started
            stats = conn.execute(
                "SELECT (SELECT crash_attempts FROM outbox_event WHERE id = %(bad)s),"
                " count(*) FILTER (WHERE id <> %(bad)s AND crash_attempts > 0),"
                " count(*) FILTER (WHERE id <> %(bad)s AND status = 'dead'),"
                " max(attempts) FILTER (WHERE id <> %(bad)s)"
                " FROM outbox_event",
                {"bad": bad},
            ).fetchone()
    db.drop(dsn)
    assert stats is not None
    return {
        "good_events": good,
        "crashes_until_dead": stats[0],
        "seconds_to_dead": round(seconds, 1),
        "good_with_a_crash_attempt": stats[1],
        "good_dead": stats[2],
        "good_max_attempts": stats[3],
    }


BUDGET_SEED = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
    created_at, done_at, dead_at, last_error)
SELECT 'order', g::text, 'bench.noop', '{}', CASE WHEN g %% 100 = 0 THEN 'dead' ELSE 'done' END, 1,
       t - CASE WHEN g %% 10 = 0 THEN interval '10 minutes' ELSE interval '1 second' END,
       CASE WHEN g %% 100 = 0 THEN NULL ELSE t END, CASE WHEN g %% 100 = 0 THEN t END,
       CASE WHEN g %% 100 = 0 THEN 'ConnectionError: refused' END
  FROM generate_series(1, %(rows)s) g,
       LATERAL (SELECT CASE WHEN g <= %(window_rows)s
                            THEN now() - (g::float / %(window_rows)s) * interval '290 seconds'
                            ELSE now() - interval '10 minutes'
                                 - (g::float / %(rows)s) * interval '1 day' END AS t) w
"""
# The reference: the same share counted over every finished row, bounded by nothing.
BUDGET_REFERENCE = b"""
SELECT count(*) FILTER (WHERE status = 'dead'),
       count(*) FILTER (WHERE status = 'done' AND done_at > created_at + interval '300 s')
  FROM outbox_event WHERE status IN ('done', 'dead')
"""


def _explain_ms(conn: psycopg.Connection[Any], statement: bytes, params: Any) -> float:
    times = []
    for _ in range(5):
        plan = conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchone()
        assert plan is not None
        times.append(float(plan[0][0]["Execution Time"]))
    return statistics.median(times)


def budget_measure(db: BenchDatabase, rows: int, window_rows: int) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(BUDGET_SEED, {"rows": rows, "window_rows": window_rows})
            conn.execute("VACUUM ANALYZE outbox_event")
            params = {"window": 300.0, "slo": 0.999, "objective": 300.0}
            burn = queries.fetch_value(conn, "alert_dead_burn_rate", params)
            measure_ms = _explain_ms(conn, queries.query("alert_dead_burn_rate"), params)
            reference_ms = _explain_ms(conn, BUDGET_REFERENCE, None)
            plan = conn.execute(
                b"EXPLAIN (COSTS OFF) " + queries.query("alert_dead_burn_rate"), params
            ).fetchall()
    finally:
        db.drop(dsn)
    indexes = sorted({w for (line,) in plan for w in line.split() if w.endswith("_idx")})
    return {
        "rows": rows,
        "window_rows": window_rows,
        "burn_rate": round(float(burn), 1),
        "measure_ms": round(measure_ms, 2),
        "reference_ms": round(reference_ms, 2),
        "ratio": round(measure_ms / reference_ms, 4),
        "indexes": ",".join(indexes),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="Smaller runs, once each.")
    parser.add_argument("--rows", type=int, default=100_000, help="Dead events of the canary run.")
    parser.add_argument("--repeat", type=int, default=3, help="Canary runs (median).")
    parser.add_argument("--pace-rows", type=int, default=20_000, help="Events of the outage run.")
    parser.add_argument("--rate", type=float, default=1000.0, help="Top redrive rate, events/s.")
    parser.add_argument("--down", type=float, default=8.0, help="Seconds the destination fails.")
    parser.add_argument("--poison-rows", type=int, default=500, help="Good events beside it.")
    parser.add_argument("--budget-rows", type=int, default=1_000_000, help="Finished events.")
    parser.add_argument(
        "--budget-window-rows", type=int, default=30_000, help="Of them, in the 5-min window."
    )
    parser.add_argument(
        "--only",
        choices=["canary", "plain", "outage", "poison", "budget"],
        help="Run one of the five parts.",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.pace_rows, args.poison_rows = 1, 12_000, 200
        args.rate, args.down = 500.0, 6.0
    db = BenchDatabase()
    result: dict[str, Any] = {"where": db.where}
    try:
        if args.only in (None, "canary"):
            result["canary"] = canary_overhead(db, args.rows, args.repeat)
            print_table(f"canary vs plain redrive ({db.where})", [result["canary"]])
        if args.only in (None, "plain"):
            result["plain"] = plain_order_cost(db, args.rows, args.repeat)
            print_table(f"plain redrive, order kept vs before ({db.where})", [result["plain"]])
        if args.only in (None, "outage"):
            result["outage"] = [
                _outage_run(db, args.pace_rows, args.rate, args.down, adaptive=adaptive)
                for adaptive in (True, False)
            ]
            print_table("a destination failing mid-redrive", result["outage"])
        if args.only in (None, "poison"):
            result["poison"] = poison(db, args.poison_rows)
            print_table("poison detection", [result["poison"]])
        if args.only in (None, "budget"):
            result["budget"] = budget_measure(db, args.budget_rows, args.budget_window_rows)
            print_table("error-budget measure vs a full count", [result["budget"]])
    finally:
        db.close()
    emit_json("redrive", result)
    return result


if __name__ == "__main__":
    main()
