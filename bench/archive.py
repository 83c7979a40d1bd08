"""Archival benchmark: rows/s archiving a million done rows, and what archival costs dispatch.

    .venv/bin/python -m bench.archive [--rows 1000000] [--dispatch-events 100000] [--pauses 0,0.1]

Part 1 seeds ``--rows`` done rows (1% with an error row) aged 10 days and archives them several
ways, each on a fresh copy of the data: the ``run_outbox_archival`` procedure (what the pg_cron
job CALLs, a commit per batch), ``dispatchbox archive run``'s Python loop (a commit per batch),
the ``archive_outbox_events`` function (every batch in one transaction), then the procedure with
smaller and larger batches and with the default pause between batches.

Part 2 runs 2 worker processes (two ``dispatchbox worker --processes 1``, a no-op handler) and
times how fast they dispatch ``--dispatch-events`` events with no archival, and while the
procedure archives ``--rows`` old done rows beside them with each pause of ``--pauses``; three
rounds, the arms alternating, every run from the same table (the old rows are there each time).
The medians are compared; the target is that dispatch loses under 25%.

The server is a throwaway cluster from the local binaries, with fsync on, or the server of
DISPATCHBOX_BENCH_DSN (a role that may create databases: the bench creates and drops its own).
It prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from dispatchbox import Dispatcher, OutboxEvent, migrations, publish_many
from dispatchbox.maintenance.archiver import DEFAULT_PAUSE_SECONDS, run_archive
from dispatchbox.tempcluster import TempCluster

ROOT = Path(__file__).resolve().parents[1]
DBNAME = "dispatchbox_bench_archive"

# The workers of part 2 import this module: `--app bench.archive:dispatcher`.
dispatcher = Dispatcher()


@dispatcher.handler("bench.noop")
def noop(event: OutboxEvent) -> None:
    """Delivers nothing: the benchmark measures the outbox, not a handler."""


@contextmanager
def server() -> Iterator[tuple[str, str]]:
    """(admin DSN, description) of the server the bench runs on."""
    external = os.environ.get("DISPATCHBOX_BENCH_DSN")
    if external:
        yield external, "DISPATCHBOX_BENCH_DSN"
        return
    cluster = TempCluster(fsync=True).start()
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            # A bench cluster gets the memory a small production server would give it.
            conn.execute("ALTER SYSTEM SET maintenance_work_mem = '256MB'")
            conn.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
            conn.execute("SELECT pg_reload_conf()")
        yield cluster.dsn("postgres"), "throwaway local cluster (fsync on)"
    finally:
        cluster.stop()


def fresh_database(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        name = sql.Identifier(DBNAME)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=DBNAME)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn)
    return dsn


def seed_done(dsn: str, rows: int) -> None:
    """`rows` done events aged 10 days, 1% of them with one error row; then VACUUM ANALYZE."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE outbox_event, outbox_event_archive CASCADE")
        step = 200_000
        for start in range(0, rows, step):
            conn.execute(
                """
                INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload,
                                          status, attempts, done_at, created_at, updated_at)
                SELECT 'order', g::text, 'order.created',
                       jsonb_build_object('order_id', g, 'total', 42.5, 'currency', 'EUR'),
                       'done', 1, now() - interval '10 days', now() - interval '10 days',
                       now() - interval '10 days'
                  FROM generate_series(%s::bigint, %s::bigint) g
                """,
                (start + 1, min(start + step, rows)),
            )
        conn.execute(
            """
            INSERT INTO outbox_event_error (event_id, attempt, worker, finished_at, error_type,
                                            message, traceback)
            SELECT id, 1, 'bench', done_at, 'TimeoutError', 'downstream timed out', 'Traceback'
              FROM outbox_event WHERE id % 100 = 0
            """
        )
        conn.execute("VACUUM (ANALYZE) outbox_event, outbox_event_error")
        conn.execute("CHECKPOINT")


def timed(label: str, rows: int, fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    moved = fn()
    seconds = time.perf_counter() - started
    if moved != rows:
        raise SystemExit(f"{label}: moved {moved} rows, expected {rows}")
    return {"method": label, "rows": moved, "seconds": seconds, "rows_per_s": moved / seconds}


def part1(dsn: str, rows: int) -> list[dict[str, Any]]:
    def procedure(batch: int, pause: float = 0.0) -> Any:
        def run() -> int:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "CALL run_outbox_archival(7, NULL, %s::integer, %s::double precision)",
                    (batch, pause),
                ).fetchone()
            assert row is not None
            return int(row[0])

        return run

    def python_loop() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return run_archive(
                conn, retention_days=7, dead_retention_days=None, batch_size=10_000
            ).done_moved

    def function() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT archive_outbox_events(7, 10000)").fetchone()
        assert row is not None
        return int(row[0])

    runs = [
        ("procedure CALL run_outbox_archival, batch 10000 (pg_cron)", procedure(10_000)),
        ("python run_archive, batch 10000 (archive run)", python_loop),
        ("function archive_outbox_events, batch 10000 (1 txn)", function),
        ("procedure, batch 1000", procedure(1_000)),
        ("procedure, batch 50000", procedure(50_000)),
        (
            f"procedure, batch 10000, pause {DEFAULT_PAUSE_SECONDS:g} s",
            procedure(10_000, DEFAULT_PAUSE_SECONDS),
        ),
    ]
    results = []
    for label, fn in runs:
        seed_done(dsn, rows)
        result = timed(label, rows, fn)
        print(f"  {label}: {result['rows_per_s']:,.0f} rows/s", file=sys.stderr, flush=True)
        results.append(result)
    return results


class Workers:
    """Two `dispatchbox worker --processes 1`, each its own supervisor and worker process."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["DISPATCHBOX_DSN"] = dsn
        self.logs = [open(log_dir / f"worker{i}.log", "wb") for i in range(2)]  # noqa: SIM115
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dispatchbox",
                    "worker",
                    "--app",
                    "bench.archive:dispatcher",
                    "--processes",
                    "1",
                    "--concurrency",
                    "20",
                    "--batch-size",
                    "100",
                    "--log-level",
                    "WARNING",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for log in self.logs
        ]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


def publish_events(dsn: str, n: int) -> None:
    events = [
        {
            "aggregate_type": "order",
            "aggregate_id": str(i),
            "event_type": "bench.noop",
            "payload": {"order_id": i},
        }
        for i in range(n)
    ]
    with psycopg.connect(dsn) as conn:
        publish_many(conn, events)
        conn.commit()


def outstanding(conn: psycopg.Connection[Any]) -> int:
    # Two counts, each through its partial index: `status IN (...)` would scan the whole table,
    # a million rows twenty times a second, and the bench would measure itself.
    row = conn.execute(
        "SELECT (SELECT count(*) FROM outbox_event WHERE status = 'pending')"
        " + (SELECT count(*) FROM outbox_event WHERE status = 'running')"
    ).fetchone()
    assert row is not None
    return int(row[0])


def drain(dsn: str, timeout: float) -> float:
    """Seconds until no event is pending or running."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while outstanding(conn):
            if time.perf_counter() - started > timeout:
                raise SystemExit("the workers did not drain the outbox in time; see the logs")
            time.sleep(0.05)
    return time.perf_counter() - started


def dispatch_run(dsn: str, rows: int, events: int, *, pause: float | None) -> dict[str, Any]:
    """Dispatch `events` events; beside the archival procedure with this pause, unless None."""
    seed_done(dsn, rows)
    archived: dict[str, float] = {}

    def archiver() -> None:
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "CALL run_outbox_archival(7, NULL, 10000, %s::double precision)", (pause,)
            ).fetchone()
        archived["rows"] = float(row[0]) if row else 0.0
        archived["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=archiver)
    started = time.perf_counter()
    if pause is not None:
        thread.start()
    publish_events(dsn, events)
    seconds = drain(dsn, timeout=600)
    dispatch_end = time.perf_counter() - started
    if pause is not None:
        thread.join()
    result: dict[str, Any] = {
        "archival_pause": pause,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
    }
    if pause is not None:
        result["archived_rows"] = int(archived["rows"])
        result["archival_seconds"] = archived["seconds"]
        # The share of the dispatch window during which archival was running.
        result["overlap"] = min(1.0, archived["seconds"] / dispatch_end)
    return result


def _arm(pause: float | None) -> str:
    if pause is None:
        return "no archival"
    return f"while archiving, pause {pause:g} s"


def part2(
    dsn: str, rows: int, events: int, pauses: list[float], log_dir: Path
) -> list[dict[str, Any]]:
    workers = Workers(dsn, log_dir)
    try:
        publish_events(dsn, 200)  # warm up: both workers started and connected
        drain(dsn, timeout=120)
        results = []
        # Alternate the arms, three rounds, and compare medians: the machine's load drifts.
        arms: list[float | None] = [None, *pauses]
        for _ in range(3):
            for pause in arms:
                r = dispatch_run(dsn, rows, events, pause=pause)
                print(
                    f"  dispatch, {_arm(pause)}: {r['events_per_s']:,.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
        return results
    finally:
        workers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="done rows to archive")
    parser.add_argument(
        "--dispatch-events", type=int, default=100_000, help="events to dispatch per run"
    )
    parser.add_argument(
        "--pauses",
        default=f"0,{DEFAULT_PAUSE_SECONDS:g}",
        help="archival pauses between batches to compare, seconds, comma-separated",
    )
    parser.add_argument("--skip-dispatch", action="store_true", help="part 1 only")
    args = parser.parse_args()
    pauses = [float(p) for p in args.pauses.split(",") if p.strip()]

    with server() as (admin_dsn, where):
        dsn = fresh_database(admin_dsn)
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"server: {where}, PostgreSQL {version[0] if version else '?'}", file=sys.stderr)
        archive_results = part1(dsn, args.rows)
        dispatch_results: list[dict[str, Any]] = []
        if not args.skip_dispatch:
            log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "dispatchbox-bench-archive"
            log_dir.mkdir(exist_ok=True)
            dispatch_results = part2(dsn, args.rows, args.dispatch_events, pauses, log_dir)
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DBNAME))
            )

    print()
    print(f"{'archival of done rows':<58} {'rows':>9} {'seconds':>8} {'rows/s':>9}")
    for r in archive_results:
        print(f"{r['method']:<58} {r['rows']:>9,} {r['seconds']:>8.1f} {r['rows_per_s']:>9,.0f}")
    figures: dict[str, Any] = {"bench": "archive", "archive": archive_results}
    if dispatch_results:
        print()
        print(f"{'2 workers dispatching':<58} {'events':>9} {'seconds':>8} {'events/s':>9}")
        for r in dispatch_results:
            label = _arm(r["archival_pause"])
            if r["archival_pause"] is not None:
                label += f" ({r['archived_rows']:,} rows in {r['archival_seconds']:.0f}s)"
            print(f"{label:<58} {r['events']:>9,} {r['seconds']:>8.1f} {r['events_per_s']:>9,.0f}")
        base = statistics.median(
            r["events_per_s"] for r in dispatch_results if r["archival_pause"] is None
        )
        figures["dispatch"] = dispatch_results
        figures["dispatch_events_per_s_without"] = base
        figures["dispatch_loss"] = {}
        for pause in pauses:
            loaded = statistics.median(
                r["events_per_s"] for r in dispatch_results if r["archival_pause"] == pause
            )
            loss = 1 - loaded / base
            figures["dispatch_loss"][f"pause_{pause:g}"] = loss
            print(
                f"dispatch lost while archiving with pause {pause:g} s (medians): {loss:.1%} "
                "(target: under 25%)"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
