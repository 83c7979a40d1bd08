"""Start-up: from `dispatchbox worker` launched to the first event done, and to every process
claiming.

    python -m bench.startup [--processes 2] [--repeat 7] [--handler sync|async]

One event waits in the outbox; the clock starts right before the command is launched and stops
at the event's done_at (the database runs on this host, so both clocks are the machine's). The
second figure is when the last of the processes opened its claim connection. Each run is a fresh
`dispatchbox worker` process tree, stopped with SIGTERM once measured. Reports the median and
the spread of the runs.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

import psycopg

from bench.apps import dispatcher
from bench.common import BenchDatabase, emit_json, launch_worker, print_table, seed


def _one_run(dsn: str, processes: int, event_type: str) -> dict[str, float]:
    seed(dsn, 1, event_type)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.time()
        proc = launch_worker(dsn, "--processes", str(processes))
        try:
            first_done = all_claiming = None
            deadline = time.monotonic() + 60
            while (first_done is None or all_claiming is None) and time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT (SELECT extract(epoch FROM min(done_at)) FROM outbox_event), "
                    "(SELECT CASE WHEN count(*) >= %s THEN extract(epoch FROM max(backend_start)) "
                    "END FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'dispatchbox-worker-claim')",
                    [processes],
                ).fetchone()
                assert row is not None
                first_done = None if row[0] is None else float(row[0])
                all_claiming = None if row[1] is None else float(row[1])
                time.sleep(0.002)
            if first_done is None or all_claiming is None:
                raise RuntimeError("the worker did not start within 60 s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        conn.execute("DELETE FROM outbox_event")
    return {"first_done_s": first_done - started, "all_claiming_s": all_claiming - started}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--handler", choices=["sync", "async"], default="sync")
    args = parser.parse_args(argv)
    event_type = "bench.noop" if args.handler == "sync" else "bench.async_noop"
    assert event_type in dispatcher.event_types
    db = BenchDatabase()
    runs: list[dict[str, float]] = []
    try:
        dsn = db.fresh()
        _one_run(dsn, args.processes, event_type)  # warm the page cache: not counted
        runs = [_one_run(dsn, args.processes, event_type) for _ in range(args.repeat)]
    finally:
        db.close()
    rows = []
    for key in ("first_done_s", "all_claiming_s"):
        values = sorted(r[key] for r in runs)
        rows.append(
            {
                "figure": key,
                "processes": args.processes,
                "handler": args.handler,
                "median_s": values[len(values) // 2],
                "min_s": values[0],
                "max_s": values[-1],
            }
        )
    print_table(f"start-up ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("startup", result)
    return result


if __name__ == "__main__":
    main()
