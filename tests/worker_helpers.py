"""Start and stop the real `dispatchbox worker`, publish test events, read what handlers saw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from dispatchbox import publish_many

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.worker_app:dispatcher"
# Short backoff and poll so that retries and idle claims happen within a test's patience.
FAST = ["--backoff-base", "0.05", "--backoff-max", "0.2", "--poll-interval", "0.2"]


class WorkerRun:
    def __init__(
        self, dsn: str, record_dir: Path, *args: str, log: Path, prefix: Sequence[str] = ()
    ) -> None:
        """``prefix`` goes before the command (``ip netns exec NS`` runs it on another host)."""
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
        env["DISPATCHBOX_DSN"] = dsn
        env["DBX_RECORD_DIR"] = str(record_dir)
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "dispatchbox", "worker", "--app", APP, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def publish(dsn: str, event_type: str, n: int, **fields: Any) -> list[int]:
    fields.setdefault("payload", {})
    events = [
        {"aggregate_type": "order", "aggregate_id": str(i), "event_type": event_type, **fields}
        for i in range(n)
    ]
    with psycopg.connect(dsn) as conn:
        ids = publish_many(conn, events)
        conn.commit()
    return ids


def records(record_dir: Path) -> list[tuple[str, int, int, int, float]]:
    out = []
    for path in record_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            kind, event_id, attempts, pid, at = line.split()
            out.append((kind, int(event_id), int(attempts), int(pid), float(at)))
    return out


def counts(dsn: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM outbox_event GROUP BY 1").fetchall()
    return Counter({status: n for status, n in rows})


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start(db_dsn: str, record_dir: Path, tmp_path: Path, *args: str) -> WorkerRun:
    """`dispatchbox worker` running the test app, its log in tmp_path."""
    return WorkerRun(db_dsn, record_dir, *args, log=tmp_path / f"worker-{time.time_ns()}.log")


def wait_for_workers(run: WorkerRun, processes: int) -> None:
    """Until every worker process is about to claim: publish after this in a test that needs
    each process to take work, or the first one up may drain everything alone."""
    wait_until(
        lambda: run.proc.poll() is None and run.log().count("worker_started") >= processes,
        60,
        f"{processes} worker processes started",
    )
