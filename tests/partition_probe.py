"""Measure what the workers and publishers feel while the outbox is converted or a partition is
retired: a publisher that commits one keyed event at a time and times each commit, and a
sampler of lock waits of the worker backends (pg_stat_activity). Used by the partition tests
and bench/partition.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from dispatchbox import publish

# Worker connections set application_name dispatchbox-worker-<role>.
_WAITS = """
SELECT COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - state_change)), 0)::float8
  FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND application_name LIKE 'dispatchbox-worker-%%'
   AND datname = current_database()
"""


class PublishProbe(threading.Thread):
    """Publishes event_type events with keys probe-<n> until stopped; keeps every id and the
    longest publish (insert + commit) in seconds."""

    def __init__(self, dsn: str, event_type: str, *, prefix: str = "probe") -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.event_type = event_type
        self.prefix = prefix
        self.ids: list[int] = []
        self.keys: list[str] = []
        self.longest = 0.0
        self.errors: list[BaseException] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                n = 0
                while not self._stop_event.is_set():
                    key = f"{self.prefix}-{n}"
                    started = time.perf_counter()
                    event_id = publish(
                        conn,
                        aggregate_type="probe",
                        aggregate_id=str(n),
                        event_type=self.event_type,
                        payload={"n": n},
                        idempotency_key=key,
                    )
                    conn.commit()
                    self.longest = max(self.longest, time.perf_counter() - started)
                    self.ids.append(event_id)
                    self.keys.append(key)
                    n += 1
                    # A steady trickle, not a flood: the test's workers must keep up.
                    self._stop_event.wait(0.005)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        if self.errors:
            raise self.errors[0]


class LockWaitSampler(threading.Thread):
    """Every few milliseconds, the longest current lock wait of a worker backend; keeps the
    maximum seen (a lower bound of the true longest wait, at the sampling resolution)."""

    def __init__(self, dsn: str, *, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.every = every
        self.longest = 0.0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop_event.is_set():
                row: Any = conn.execute(_WAITS).fetchone()
                self.longest = max(self.longest, float(row[0]))
                self.samples += 1
                self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
