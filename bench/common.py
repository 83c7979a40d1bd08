"""What every worker benchmark shares: a database, seeding, the worker process, figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from dispatchbox import migrations
from dispatchbox.tempcluster import TempCluster

ROOT = Path(__file__).resolve().parents[1]


class BenchDatabase:
    """DISPATCHBOX_BENCH_DSN's server, or a throwaway cluster with fsync and synchronous_commit
    on (as a production server would run), and a fresh migrated database per scenario."""

    def __init__(self, *, listen_addresses: str = "127.0.0.1") -> None:
        self.cluster: TempCluster | None = None
        dsn = os.environ.get("DISPATCHBOX_BENCH_DSN")
        if dsn:
            self.admin_dsn = dsn
            self.where = "DISPATCHBOX_BENCH_DSN"
        else:
            self.cluster = TempCluster(fsync=True, listen_addresses=listen_addresses).start()
            self.admin_dsn = self.cluster.dsn()
            self.where = "throwaway cluster (fsync on, synchronous_commit on)"
        self.created: list[str] = []

    def fresh(self, *, target: int | None = None) -> str:
        """A new database, migrated (up to migration ``target`` when given)."""
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        dsn = conninfo.make_conninfo(self.admin_dsn, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn, target=target)
        return dsn

    def drop(self, dsn: str) -> None:
        name = conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def close(self) -> None:
        for name in self.created:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        if self.cluster is not None:
            self.cluster.stop()


def seed(dsn: str, n: int, event_type: str = "bench.noop", max_attempts: int = 5) -> datetime:
    """n pending events in one statement (the publish path is measured on its own). Returns the
    database clock right after the insert committed: a worker that is already running cannot
    see an event before that, so a drain clock starts there, not before the insert (which takes
    ~0.6 s for 100,000 rows here). The ANALYZE that follows runs inside such a clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, "
            "max_attempts) SELECT 'bench', g::text, %s, jsonb_build_object('n', g), %s "
            "FROM generate_series(1, %s) g",
            [event_type, max_attempts, n],
        )
        committed = db_clock(conn)
        conn.execute("ANALYZE outbox_event")
    return committed


def checkpoint(dsn: str) -> None:
    """Start a measured run right after a checkpoint: after one, the first change to each page
    writes the whole page to the WAL, so a run that crossed a checkpoint would pay more than
    one that did not (the raw loop's figure swung 57k-77k events/s between runs without this)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s, with every run's figure beside it. Each run checked
    its own result; the reported one says whether all of them passed."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs_events_per_s"] = [round(r["events_per_s"]) for r in ordered]
    if "exactly_once" in chosen:
        chosen["exactly_once"] = all(r["exactly_once"] for r in ordered)
    return chosen


def db_clock(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def seconds_until_last_done(dsn: str, start: datetime) -> float:
    """From `start` (database clock) to the last completion: the end of a drain measured on the
    database's clock, so that the harness can poll for the end rarely (each poll costs the
    server ~1 ms mid-drain, time the system under test would otherwise have)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(done_at) - %s)::float8 FROM outbox_event", [start]
        ).fetchone()
    assert row is not None and row[0] is not None, "no event is done"
    return float(row[0])


def count_where(dsn: str, condition: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM outbox_event WHERE {condition}").fetchone()
    return int(row[0]) if row else 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def launch_worker(
    dsn: str,
    *args: str,
    app: str = "bench.apps:dispatcher",
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """`dispatchbox worker` started now, its output discarded; the caller stops it. ``prefix``
    goes before the command (``ip netns exec NS``: another host, bench/hosts.py)."""
    command = [*prefix, sys.executable, "-m", "dispatchbox", "worker", "--app", app]
    return subprocess.Popen(
        [*command, "--log-level", "WARNING", *args],
        cwd=ROOT,
        env={**os.environ, "DISPATCHBOX_DSN": dsn, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def worker(
    dsn: str,
    *args: str,
    app: str = "bench.apps:dispatcher",
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """`dispatchbox worker` running until the block ends; waits until every process is up."""
    proc = launch_worker(dsn, *args, app=app, env=env, prefix=prefix)
    try:
        expected = int(args[args.index("--processes") + 1]) if "--processes" in args else 1
        deadline = time.monotonic() + 30
        # Ready when every worker process holds its connections.
        while time.monotonic() < deadline:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'dispatchbox-worker-claim'"
                ).fetchone()
            if row and row[0] >= expected:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_drained(dsn: str, timeout: float = 600, step: float = 0.1) -> None:
    """Returns once nothing is pending or running. Two index probes per poll, every `step`
    seconds: the check must not load the database it measures (a count(*) would scan the table;
    even these probes cost ~1 ms each mid-drain). Time the drain with seconds_until_last_done."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM outbox_event WHERE status = 'pending') "
                "OR EXISTS (SELECT 1 FROM outbox_event WHERE status = 'running')"
            ).fetchone()
            if row is not None and not row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not drained after {timeout}s")
            time.sleep(step)


def cpu_busy_seconds() -> float | None:
    """CPU time the whole machine has spent busy (all cores, user + system + interrupts), from
    /proc/stat; None where there is none. Taken around a drain it gives the CPU the drain cost,
    client and server together: on a saturated machine throughput is cores / CPU per event, and
    this figure moves less than a wall-clock rate when the host under a virtual machine is busy."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_us_per_event(before: float | None, after: float | None, events: int) -> float | None:
    if before is None or after is None:
        return None
    return (after - before) / events * 1e6


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, in order
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def emit_json(name: str, payload: dict[str, Any]) -> None:
    print("JSON " + json.dumps({"bench": name, **payload}, default=str), flush=True)
