"""Dead-letter benchmark: stats, counts, pages, export and redrive on a million dead events.

    .venv/bin/python -m bench.dead_letters [--rows 1000000] [--repeat 5]

Seeds ``--rows`` dead events in one INSERT ... SELECT generate_series (8 event types, 4
aggregate types, 5 error families whose messages carry ids, deaths spread over 30 days, ~150-byte
payloads), then VACUUM ANALYZE (what autovacuum does on a live table) and measures, in order:

* ``dead_event_stats`` by event type / aggregate type / error, and totals only; ``count`` with
  each filter; the first list page and a deep keyset page: median and best of ``--repeat`` runs
  through OutboxRepository (a connection per call, as the CLI does). Targets: stats and a filtered
  count under 300 ms.
* ``dispatchbox dead-events export --format jsonl|csv|json`` of every row to a file, as a
  subprocess: rows/s, the process's peak RSS, and the CPU seconds the CLI and its database session
  used (the figure to read on a machine shared with other work). Target: at least 100,000 rows/s,
  peak under 150 MB.
* ``dispatchbox dead-events retry-batch --all-matching --since <31 days ago> --yes``: every
  dead event redriven by filter, in 5,000-row batches. Target: under 30 s.

The server is a throwaway cluster with fsync on (and max_wal_size 4GB), or
DISPATCHBOX_BENCH_DSN's server (a role that may create databases: the bench creates and drops its
own; it never seeds DISPATCHBOX_DSN's database). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ROOT, BenchDatabase, emit_json, print_table
from dispatchbox import OutboxRepository
from dispatchbox.fingerprint import fingerprint

SEED = """
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, headers, status,
    attempts, max_attempts, last_error, last_error_at, dead_at, created_at)
SELECT (ARRAY['order', 'customer', 'invoice', 'shipment'])[1 + g %% 4],
       g::text,
       (ARRAY['order.created', 'order.paid', 'customer.updated', 'invoice.issued',
              'shipment.sent', 'order.cancelled', 'invoice.voided', 'customer.deleted'])
           [1 + (g / 7) %% 8],
       jsonb_build_object('order_id', g, 'customer', 'customer-' || (g %% 5000),
                          'total', (g %% 1000) * 1.5, 'currency', 'EUR',
                          'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || g %% 97,
                                                                        'qty', 1 + g %% 3))),
       jsonb_build_object('trace_id', md5(g::text)),
       'dead', 5, 5,
       CASE g %% 5
         WHEN 0 THEN 'HTTPError: 503 Server Error: Service Unavailable for url: '
                     || 'https://payments.example.com/orders/' || g
         WHEN 1 THEN 'KeyError: ''customer_' || g || ''''
         WHEN 2 THEN 'ValueError: order ' || g || ' has invalid amount ' || (g %% 100) || '.50'
         WHEN 3 THEN 'TimeoutError: request ' || md5(g::text)::uuid || ' timed out after 30.0s'
         ELSE 'UniqueViolation: duplicate key value violates unique constraint "payments_pkey" '
              || 'DETAIL: Key (id)=(' || g || ') already exists.'
       END,
       now() - make_interval(secs => g * 2.592),
       now() - make_interval(secs => g * 2.592),
       now() - make_interval(secs => g * 2.592) - interval '1 hour'
  FROM generate_series(1, %(rows)s) g
"""


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(median ms, best ms, last result) of repeat calls."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), result


class ServerCpu:
    """CPU seconds used by the throwaway cluster's backends: the postmaster's reaped children
    (cutime + cstime in /proc). None on an external server."""

    def __init__(self, bench: BenchDatabase) -> None:
        self.pid: int | None = None
        if bench.cluster is not None:
            pidfile = bench.cluster.datadir / "postmaster.pid"
            self.pid = int(pidfile.read_text().split()[0])

    def read(self) -> float | None:
        if self.pid is None:
            return None
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run_cli(dsn: str, server: ServerCpu, *args: str) -> dict[str, Any]:
    """Run `dispatchbox ...` and measure it: wall seconds, the process's peak RSS and CPU (from
    wait4), and the CPU its database session used (when the server is ours)."""
    env = {**os.environ, "DISPATCHBOX_DSN": dsn}
    server_before = server.read()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatchbox", *args], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(
                f"dispatchbox {' '.join(args)} failed: {err.read().decode()[-2000:]}"
            )
        time.sleep(0.2)  # let the postmaster reap the session's backend
        server_after = server.read()
        return {
            "seconds": seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "client_cpu_s": usage.ru_utime + usage.ru_stime,
            "server_cpu_s": None
            if server_before is None or server_after is None
            else server_after - server_before,
            "stdout": out.read().decode(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows_n: int = args.rows

    bench = BenchDatabase()
    figures: dict[str, Any] = {"rows": rows_n, "server": bench.where}
    try:
        if bench.cluster is not None:
            # Redriving a million rows writes about 2 GB of WAL: give the throwaway cluster the
            # checkpoint distance a production server would have (bench/archive.py does too).
            with psycopg.connect(bench.admin_dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
                conn.execute("SELECT pg_reload_conf()")
            figures["server"] += ", max_wal_size 4GB"
        dsn = bench.fresh()
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            figures["postgresql"] = version[0] if version else "?"
            print(f"server: {bench.where}, PostgreSQL {figures['postgresql']}", file=sys.stderr)
            print(f"seeding {rows_n:,} dead events ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            conn.execute(SEED, {"rows": rows_n})
            figures["seed_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            conn.execute("VACUUM ANALYZE outbox_event")
            conn.execute("VACUUM ANALYZE outbox_dead_fingerprint")
            figures["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
        print(
            f"seeded in {figures['seed_s']} s, vacuum analyze {figures['vacuum_analyze_s']} s",
            file=sys.stderr,
            flush=True,
        )

        repo = OutboxRepository(dsn)
        now = datetime.now(UTC)
        fp = fingerprint("KeyError: 'customer_1'")
        reads: list[tuple[str, Callable[[], Any], float | None]] = [
            ("stats --by event_type", lambda: repo.dead_event_stats(by=["event_type"]), 300),
            (
                "stats --by aggregate_type",
                lambda: repo.dead_event_stats(by=["aggregate_type"]),
                300,
            ),
            ("stats --by error", lambda: repo.dead_event_stats(by=["error"]), 300),
            ("stats, totals only", lambda: repo.dead_event_stats(by=[]), 300),
            ("count (no filter)", lambda: repo.count_dead_events(), None),
            (
                "count --event-type (12.5%)",
                lambda: repo.count_dead_events(event_type="order.paid"),
                300,
            ),
            (
                "count --aggregate-type (25%)",
                lambda: repo.count_dead_events(aggregate_type="invoice"),
                300,
            ),
            (
                "count --since 1 day",
                lambda: repo.count_dead_events(since=now - timedelta(days=1)),
                300,
            ),
            (
                "count --error-fingerprint (20%)",
                lambda: repo.count_dead_events(error_fingerprint=fp),
                None,
            ),
            (
                "count --error-contains (scan)",
                lambda: repo.count_dead_events(error_contains="timed out"),
                None,
            ),
            ("list first page (100)", lambda: repo.fetch_dead_events(limit=100), None),
            (
                "list keyset page after 90% of ids",
                lambda: repo.fetch_dead_events(limit=100, after_id=rows_n * 9 // 10),
                None,
            ),
        ]
        read_rows = []
        for label, fn, target in reads:
            median, best, _ = timed(fn, args.repeat)
            ok = "" if target is None else ("yes" if median < target else "NO")
            read_rows.append(
                {
                    "operation": label,
                    "median_ms": median,
                    "best_ms": best,
                    "target_ms": target or "-",
                    "met": ok,
                }
            )
            print(f"  {label}: {median:.0f} ms", file=sys.stderr, flush=True)
        figures["reads"] = read_rows

        server = ServerCpu(bench)
        exports = []
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("jsonl", "csv", "json"):
                target = Path(tmp) / f"dead.{fmt}"
                run = run_cli(
                    dsn, server, "dead-events", "export", "--format", fmt, "--output", str(target)
                )
                exports.append(
                    {
                        "format": fmt,
                        "rows": rows_n,
                        "seconds": run["seconds"],
                        "rows_per_s": rows_n / run["seconds"],
                        "peak_rss_mb": run["peak_rss_mb"],
                        "client_cpu_s": run["client_cpu_s"],
                        "server_cpu_s": run["server_cpu_s"],
                        "file_mb": target.stat().st_size / 2**20,
                    }
                )
                print(
                    f"  export {fmt}: {rows_n / run['seconds']:,.0f} rows/s, "
                    f"{run['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
                target.unlink()
        figures["exports"] = exports

        since = (now - timedelta(days=31)).isoformat()
        run = run_cli(
            dsn, server, "dead-events", "retry-batch", "--all-matching", "--since", since, "--yes"
        )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'pending'), "
                "count(*) FILTER (WHERE status = 'dead') FROM outbox_event"
            ).fetchone()
        assert row is not None
        figures["redrive"] = {
            "events": row[0],
            "still_dead": row[1],
            "seconds": run["seconds"],
            "events_per_s": row[0] / run["seconds"],
            "peak_rss_mb": run["peak_rss_mb"],
            "client_cpu_s": run["client_cpu_s"],
            "server_cpu_s": run["server_cpu_s"],
            "output": run["stdout"].strip(),
        }
        print(f"  redrive: {run['seconds']:.1f} s for {row[0]:,} events", file=sys.stderr)
        with open("/proc/loadavg") as f:
            figures["loadavg_after"] = f.read().split()[:3]
    finally:
        bench.close()

    print_table(f"dead-letter reads on {rows_n:,} dead events", figures["reads"])
    print_table(
        "export of every dead event (dispatchbox dead-events export, a subprocess)",
        figures["exports"],
    )
    redrive = figures["redrive"]
    print_table(
        "redrive of every dead event by filter (retry-batch --all-matching --since ...)",
        [
            {
                "events": redrive["events"],
                "still_dead": redrive["still_dead"],
                "seconds": redrive["seconds"],
                "events_per_s": redrive["events_per_s"],
                "server_cpu_s": redrive["server_cpu_s"],
                "target_s": 30,
                "met": "yes" if redrive["seconds"] < 30 else "NO",
            }
        ],
    )
    jsonl = next(e for e in figures["exports"] if e["format"] == "jsonl")
    print(
        f"\nexport jsonl: {jsonl['rows_per_s']:,.0f} rows/s (target 100,000), peak RSS "
        f"{jsonl['peak_rss_mb']:.0f} MB (target under 150 MB)"
    )
    print(
        "CPU seconds are what each side used, whatever else ran on the machine; load average "
        f"after the run: {' '.join(figures['loadavg_after'])}"
    )
    emit_json("dead_letters", figures)


if __name__ == "__main__":
    main()
