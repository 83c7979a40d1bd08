"""Soak: ten minutes of steady load through `dispatchbox worker` with archival scheduled in
pg_cron every minute. Memory stays flat in every worker process (RSS sampled over the run and
printed) and the outbox stays bounded (archival keeps up); every event published is done.

DISPATCHBOX_SOAK_SECONDS shortens or lengthens the run (default 600).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dispatchbox import publish_many
from tests.conftest import run_cli
from tests.pg import PgServer
from tests.reliability.test_faults import worker_pids
from tests.worker_helpers import FAST, start, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.pg_cron, pytest.mark.timeout(1500)]

RATE = 200  # events a second, in 4 commits of 50
SAMPLE_EVERY = 15.0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_ten_minutes_of_steady_load_with_archival(
    pg_cron: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    seconds = float(os.environ.get("DISPATCHBOX_SOAK_SECONDS", "600"))
    scheduled = run_cli("archive", "schedule", "--cron", "* * * * *", "--retention-days", "0",
                        "--create-extension", dsn=db_dsn)  # fmt: skip
    assert scheduled.code == 0, scheduled.stderr
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    published = 0
    stop = threading.Event()

    def publisher() -> None:
        nonlocal published
        with psycopg.connect(db_dsn) as conn:
            n = 0
            next_at = time.monotonic()
            while not stop.is_set():
                publish_many(conn, [
                    {"aggregate_type": "soak", "aggregate_id": str(n + i), "event_type": "test.ok",
                     "payload": {"n": n + i, "pad": "x" * 200}}
                    for i in range(RATE // 4)
                ])  # fmt: skip
                conn.commit()
                n += RATE // 4
                published = n
                next_at += 0.25
                time.sleep(max(0.0, next_at - time.monotonic()))

    samples: list[tuple[float, dict[int, float], int, int]] = []  # (t, rss by pid, rows, pending)
    thread = threading.Thread(target=publisher, daemon=True)
    try:
        wait_until(lambda: run.log().count("worker_started") >= 2, 60, "workers started")
        pids = [run.proc.pid, *worker_pids(run)]
        began = time.monotonic()
        thread.start()
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while (elapsed := time.monotonic() - began) < seconds:
                rows, pending = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE status <> 'done') FROM outbox_event"
                ).fetchone() or (0, 0)
                rss = {pid: rss_mb(pid) or 0.0 for pid in pids}
                samples.append((elapsed, rss, rows, pending))
                time.sleep(SAMPLE_EVERY)
        stop.set()
        thread.join(30)
        wait_until(lambda: _not_done(db_dsn) == 0, 120, "the last events done")
    finally:
        stop.set()
        assert run.stop() == 0, run.log()[-3000:]
        run_cli("archive", "unschedule", dsn=db_dsn)
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM outbox_event), "
            "(SELECT count(*) FROM outbox_event_archive)"
        ).fetchone()
    assert row is not None
    live, archived = row
    print(f"\nsoak {seconds:.0f}s: published {published}, archived {archived}, left {live}")
    print("t(s)  " + "  ".join(f"pid {p:>7}" for p in pids) + "   outbox_rows  not_done")
    for t, rss, rows, pending in samples[:: max(1, len(samples) // 12)] + samples[-1:]:
        cells = "  ".join(f"{rss[p]:8.1f}MB" for p in pids)
        print(f"{t:5.0f} {cells}   {rows:11d}  {pending:8d}")
    assert live + archived == published, "an event was lost"
    assert archived > published // 2, "archival did not run"
    # Bounded: archival each minute keeps the table to a couple of minutes of events, and the
    # workers keep up (the not-done count is a few seconds of events).
    warm = [s for s in samples if s[0] >= min(120, seconds / 2)]
    assert max(s[2] for s in warm) < RATE * 200, "the outbox kept growing"
    assert max(s[3] for s in samples) < RATE * 10, "the workers fell behind"
    # Flat: every process's RSS over the last third of the run within a few MB of the middle.
    middle = [s for s in samples if seconds / 3 <= s[0] < 2 * seconds / 3]
    last = [s for s in samples if s[0] >= 2 * seconds / 3]
    for pid in pids:
        base = max(s[1][pid] for s in middle)
        end = max(s[1][pid] for s in last)
        assert end - base < max(8.0, base * 0.1), f"pid {pid} grew {base:.1f} -> {end:.1f} MB"


def _not_done(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outbox_event WHERE status <> 'done'").fetchone()
    return int(row[0]) if row else 0
