"""Peers side by side: the same backlog drained by dispatchbox and by the PostgreSQL queues
people compare it with, in one run, on one server.

    python -m bench peers [--events 100000,500000] [--repeat 3] [--systems a,b,...] [--quick]

Systems: dispatchbox-sync and dispatchbox-async (the real `dispatchbox worker` CLI with the
sync and the async no-op handler of bench/apps.py), graphile-worker and pg-boss (Node.js),
pgqueuer and procrastinate (Python), and the raw SQL loop on dispatchbox's schema (bench/raw_sql.py)
as the reference. The peers are installed on first use into bench/.peers-cache/ at the versions
pinned in bench/peers/ (package-lock.json for npm, requirements.txt for a virtualenv of their
own); their drivers are the small scripts beside those files.

Every run: a fresh database; the system's schema and the backlog of no-op jobs written with the
system's own bulk API and ANALYZEd (not timed); a CHECKPOINT; then the clock starts (the
database's clock), the system's 2 worker processes are launched, and the clock stops at the
last completion (the system's own completion timestamp where it keeps one, else the first poll
that finds nothing left, polled every 50 ms). Every run checks that each job was handled
exactly once. Rounds alternate the systems (one run of each, then the next round), so that a
host whose speed drifts moves every system alike; each row reports its median run, and its
ratios are the medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from bench import raw_sql
from bench.common import (
    BenchDatabase,
    checkpoint,
    count_where,
    db_clock,
    emit_json,
    launch_worker,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
)

PEERS_DIR = Path(__file__).resolve().parent / "peers"
CACHE = Path(
    os.environ.get("DISPATCHBOX_PEERS_CACHE", Path(__file__).resolve().parent / ".peers-cache")
)
PROCESSES = 2
POLL = 0.05  # seconds between "anything left?" polls


class PeerError(Exception):
    """A peer could not be installed or run; the message is the one line the user sees."""


@dataclass(frozen=True)
class Peer:
    """A system other than dispatchbox: how to drive it and how to read its result."""

    name: str
    runtime: str  # "node" or "python"
    script: str  # under bench/peers/
    settings: str  # what the driver runs with (also in the docs)
    remaining: str  # SQL: true while a job is not finished
    # SQL run after the workers stopped: (last completion or NULL, jobs completed once)
    finished: str | None


PEERS: dict[str, Peer] = {
    p.name: p
    for p in [
        Peer(
            "graphile-worker",
            "node",
            "graphile_worker.cjs",
            "concurrency 24, pool 25, localQueue 500, completeJobBatchDelay 0, "
            "failJobBatchDelay 0 (its performance page); addJobs in chunks of 10,000",
            "SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)",
            None,  # a finished job is deleted: the end is the first empty poll
        ),
        Peer(
            "pg-boss",
            "node",
            "pg_boss.cjs",
            "4 work() loops a process, batchSize 1000, pollingIntervalSeconds 0.5 (its minimum), "
            "supervise and schedule off; insert() in chunks of 10,000",
            "SELECT EXISTS (SELECT 1 FROM pgboss.job WHERE name = 'noop' "
            "AND state IN ('created', 'retry', 'active'))",
            "SELECT max(completed_on), count(*) FILTER (WHERE state = 'completed' "
            "AND retry_count = 0) FROM pgboss.job WHERE name = 'noop'",
        ),
        Peer(
            "pgqueuer",
            "python",
            "pgqueuer_driver.py",
            "asyncpg on uvloop, async entrypoint, batch_size 100, log aggregation off; "
            "enqueue() with lists in chunks of 10,000",
            "SELECT EXISTS (SELECT 1 FROM pgqueuer)",
            "SELECT max(created), count(*) FROM pgqueuer_log WHERE status = 'successful'",
        ),
        Peer(
            "procrastinate",
            "python",
            "procrastinate_driver.py",
            "psycopg connector, concurrency 10 async jobs a process, LISTEN/NOTIFY on; "
            "batch_defer_async in chunks of 10,000",
            "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))",
            "SELECT (SELECT max(at) FROM procrastinate_events WHERE type = 'succeeded'), "
            "(SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded' "
            "AND attempts = 1)",
        ),
    ]
}

DBX_FLAGS = ("--processes", str(PROCESSES), "--batch-size", "1000")
DBX_SETTINGS = {
    # Two threads: the docs' advice for handlers that hardly wait (worker.md, performance.md).
    "dispatchbox-sync": ("bench.noop", ("--concurrency", "2")),
    "dispatchbox-async": ("bench.async_noop", ()),
}
REFERENCE = "raw SQL loop"
SYSTEMS = [*DBX_SETTINGS, "raw", *PEERS]


# -- installing the peers --------------------------------------------------------------------


def _run_quiet(cmd: list[str], what: str, **kwargs: Any) -> None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except OSError as exc:
        raise PeerError(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        raise PeerError(f"{what} failed (exit {result.returncode}): {lines[-1] if lines else ''}")


def _stamp_matches(stamp: Path, pins: str) -> bool:
    return stamp.exists() and stamp.read_text() == pins


def ensure_node_peers() -> Path:
    """node_modules of bench/peers/package-lock.json under the cache; installed when missing
    or when the pins changed. Returns the node_modules folder."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise PeerError(f"{tool} not found: the Node.js peers need Node.js 20 and npm on PATH")
    target = CACHE / "node"
    pins = (PEERS_DIR / "package-lock.json").read_text()
    stamp = target / ".pins"
    if not _stamp_matches(stamp, pins):
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(PEERS_DIR / name, target / name)
        print(f"installing the Node.js peers into {target} ...", file=sys.stderr, flush=True)
        _run_quiet(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            "npm ci (graphile-worker, pg-boss)",
            cwd=target,
        )
        stamp.write_text(pins)
    return target / "node_modules"


def ensure_python_peers() -> Path:
    """A virtualenv of the peers' own under the cache (never the project's), with
    bench/peers/requirements.txt installed. Returns its python."""
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    pins = (PEERS_DIR / "requirements.txt").read_text()
    stamp = venv / ".pins"
    if not _stamp_matches(stamp, pins):
        print(f"installing the Python peers into {venv} ...", file=sys.stderr, flush=True)
        if not python.exists():
            _run_quiet([sys.executable, "-m", "venv", str(venv)], "creating the peers' virtualenv")
        _run_quiet(
            [str(python), "-m", "pip", "install", "-q", "-r", str(PEERS_DIR / "requirements.txt")],
            "pip install (pgqueuer, procrastinate)",
        )
        stamp.write_text(pins)
    return python


# -- one run of each kind ----------------------------------------------------------------------


def _bare_database(db: BenchDatabase) -> str:
    """A fresh database without dispatchbox's schema, dropped with the others at the end."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db.created.append(name)
    return conninfo.make_conninfo(db.admin_dsn, dbname=name)


def _start(dsn: str) -> datetime:
    checkpoint(dsn)
    with psycopg.connect(dsn) as conn:
        return db_clock(conn)


def _poll_until_done(
    dsn: str, query: str, timeout: float, procs: list[subprocess.Popen[str]]
) -> datetime:
    """Polls `query` (true while work remains) every POLL seconds; returns the database clock of
    the first poll that found nothing left."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(f"SELECT ({query}), clock_timestamp()").fetchone()
            assert row is not None
            if not row[0]:
                return row[1]  # type: ignore[no-any-return]
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                _, err = dead[0].communicate()
                last = (err or "").strip().splitlines()[-1:] or [""]
                raise PeerError(f"a worker exited early (exit {dead[0].returncode}): {last[0]}")
            if time.monotonic() > deadline:
                raise PeerError(f"not drained after {timeout:.0f} s")
            time.sleep(POLL)


def _stop(procs: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out or "")
    return outputs


def _timeout(events: int) -> float:
    return 120 + events / 200  # the slowest peer measured drains ~500 jobs/s


def run_dispatchbox(db: BenchDatabase, system: str, events: int) -> dict[str, Any]:
    event_type, flags = DBX_SETTINGS[system]
    dsn = db.fresh()
    try:
        seed(dsn, events, event_type)
        start = _start(dsn)
        # The real CLI, launched after the clock started: its start-up is part of the figure.
        proc = launch_worker(dsn, *DBX_FLAGS, *flags)
        try:
            wait_drained(dsn, timeout=_timeout(events), step=POLL)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        seconds = seconds_until_last_done(dsn, start)
        once = count_where(dsn, "status = 'done' AND attempts = 1")
        return {"seconds": seconds, "completed_once": once, "exactly_once": once == events}
    finally:
        db.drop(dsn)


def run_raw(db: BenchDatabase, events: int) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        seed(dsn, events)
        checkpoint(dsn)
        start, _, _ = raw_sql.drain(dsn, clients=PROCESSES, batch=1000)
        seconds = seconds_until_last_done(dsn, start)
        done = count_where(dsn, "status = 'done' AND attempts = 1")
        return {"seconds": seconds, "completed_once": done, "exactly_once": done == events}
    finally:
        db.drop(dsn)


def run_peer(
    db: BenchDatabase, peer: Peer, events: int, runtimes: dict[str, Path]
) -> dict[str, Any]:
    dsn = _bare_database(db)
    params = conninfo.conninfo_to_dict(dsn)
    env = {
        **os.environ,
        "PEER_PG": json.dumps(
            {
                "host": params.get("host", "localhost"),
                "port": int(params.get("port", 5432)),
                "user": params.get("user", "postgres"),
                "database": params["dbname"],
            }
        ),
    }
    if params.get("password"):
        # in the environment, where node-postgres, asyncpg and libpq all look, never in argv
        env["PGPASSWORD"] = params["password"]
    if peer.runtime == "node":
        cmd = ["node", str(PEERS_DIR / peer.script)]
        env["NODE_PATH"] = str(runtimes["node"])
    else:
        cmd = [str(runtimes["python"]), str(PEERS_DIR / peer.script)]
    try:
        _run_quiet([*cmd, "setup", str(events)], f"{peer.name} setup", env=env, timeout=900)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")  # as dispatchbox's seed does
        start = _start(dsn)
        procs = [
            subprocess.Popen(
                [*cmd, "work"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(PROCESSES)
        ]
        try:
            polled_end = _poll_until_done(dsn, peer.remaining, _timeout(events), procs)
        finally:
            outputs = _stop(procs)
        handled = sum(int(m) for out in outputs for m in re.findall(r"^handled (\d+)$", out, re.M))
        if peer.finished is not None:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(peer.finished).fetchone()
            assert row is not None and row[0] is not None, f"{peer.name}: no job completed"
            end, once = row[0], int(row[1])
        else:
            end, once = polled_end, handled
        return {
            "seconds": (end - start).total_seconds(),
            "completed_once": once,
            "handled": handled,
            "exactly_once": once == events and handled == events,
        }
    finally:
        db.drop(dsn)


# -- the comparison ----------------------------------------------------------------------------


def _label(system: str) -> str:
    return REFERENCE if system == "raw" else system


def _settings(system: str) -> str:
    if system in DBX_SETTINGS:
        event_type, flags = DBX_SETTINGS[system]
        return f"dispatchbox worker {' '.join(DBX_FLAGS + flags)} ({event_type})"
    if system == "raw":
        return (
            f"{PROCESSES} clients, claim 1,000 SKIP LOCKED + mark done, connected before the clock"
        )
    return PEERS[system].settings


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def compare(
    systems: list[str], sizes: list[int], repeat: int, log: Callable[[str], None]
) -> tuple[str, list[dict[str, Any]]]:
    runtimes: dict[str, Path] = {}
    if any(PEERS[s].runtime == "node" for s in systems if s in PEERS):
        runtimes["node"] = ensure_node_peers()
    if any(PEERS[s].runtime == "python" for s in systems if s in PEERS):
        runtimes["python"] = ensure_python_peers()
    db = BenchDatabase()
    rows: list[dict[str, Any]] = []
    try:
        for events in sizes:
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            for round_no in range(1, repeat + 1):
                for system in systems:
                    if system in DBX_SETTINGS:
                        run = run_dispatchbox(db, system, events)
                    elif system == "raw":
                        run = run_raw(db, events)
                    else:
                        run = run_peer(db, PEERS[system], events, runtimes)
                    run["events_per_s"] = events / run["seconds"]
                    runs[system].append(run)
                    log(
                        f"{events:,} events, round {round_no}/{repeat}: {_label(system)} "
                        f"{run['events_per_s']:,.0f} events/s"
                        + ("" if run["exactly_once"] else " (NOT exactly once)")
                    )
            rows += _rows(systems, events, runs)
    finally:
        db.close()
    return db.where, rows


def _rows(
    systems: list[str], events: int, runs: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    def ratios(system: str, base: str) -> list[float]:
        return [
            r["events_per_s"] / b["events_per_s"]
            for r, b in zip(runs[system], runs[base], strict=True)
        ]

    rows = []
    for system in systems:
        rates = sorted(r["events_per_s"] for r in runs[system])
        row: dict[str, Any] = {
            "system": _label(system),
            "events": events,
            "events_per_s": _median(rates),
            "spread": f"{rates[0]:,.0f}-{rates[-1]:,.0f}",
        }
        if "dispatchbox-sync" in runs and system != "dispatchbox-sync":
            row["vs_dispatchbox_sync"] = round(_median(ratios(system, "dispatchbox-sync")), 2)
        if "raw" in runs and system in DBX_SETTINGS:
            row["dispatchbox_vs_raw"] = round(_median(ratios(system, "raw")), 2)
        row["exactly_once"] = all(r["exactly_once"] for r in runs[system])
        row["runs_events_per_s"] = [round(r) for r in rates]
        row["settings"] = _settings(system)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench peers", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--events", default="100000,500000", help="backlog sizes, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row reports its median")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"a subset of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 events, one round")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        parser.error(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    try:
        sizes = [int(v.replace("_", "")) for v in args.events.split(",")]
    except ValueError:
        parser.error(f"--events takes whole numbers, comma separated, not {args.events!r}")
    repeat = max(1, args.repeat)
    if args.quick:
        sizes, repeat = [2_000], 1
    try:
        where, rows = compare(
            systems, sizes, repeat, lambda s: print(s, file=sys.stderr, flush=True)
        )
    except PeerError as exc:
        print(f"python -m bench peers: {exc}", file=sys.stderr)
        sys.exit(1)
    table = [
        {
            "system": r["system"],
            "events": r["events"],
            "median events/s": r["events_per_s"],
            "spread": r["spread"],
            "vs dispatchbox-sync": r.get("vs_dispatchbox_sync", "-"),
            "dispatchbox vs raw": r.get("dispatchbox_vs_raw", "-"),
            "exactly once": "yes" if r["exactly_once"] else "NO",
        }
        for r in rows
    ]
    print_table(
        f"peers, {PROCESSES} processes each, clock started before the workers ({where})", table
    )
    print("\nsettings:")
    for system in systems:
        print(f"  {_label(system)}: {_settings(system)}")
    result = {"where": where, "processes": PROCESSES, "rows": rows}
    emit_json("peers", result)
    return result


if __name__ == "__main__":
    main()
