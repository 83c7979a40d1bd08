"""Prometheus metrics: counters from every worker process, gauges read from the database.

Two sources end up on one ``/metrics``:

* Worker processes count what they do (``WorkerMetrics``: dispatched events by type and
  outcome, handler durations, deaths, attempts before death, expired leases). Processes are many
  and short-lived compared to a counter, so prometheus-client's multiprocess mode keeps each
  process's values in a file of a shared directory (``PROMETHEUS_MULTIPROC_DIR``) and the serving
  process adds them up (``MultiProcessCollector``). The supervisor owns that directory
  (``MetricsDirectory``): it empties it at start, sets the variable before its children start,
  and marks each child that exits as dead. A dead child's counts stay, so totals never go
  backwards when a worker is restarted.
* The state of the outbox is read from PostgreSQL at scrape time (``DatabaseCollector``, in
  dispatchbox.observability.database_metrics): dead events now by type, pending and running
  counts, the oldest due pending event's age (lag), the oldest dead event's age, recent deaths
  by error fingerprint, where redriven events ended, and the alert state. Results are cached
  for a few seconds behind a lock, so any number of scrapers costs one set of queries per
  period.

No label ever carries an event id or an error's text: event types and aggregate types (capped,
the rest as ``other``), outcomes, and error fingerprints (the top few, the rest as ``other``).
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dispatchbox.observability.database_metrics import OTHER, DatabaseCollector

logger = logging.getLogger("dispatchbox.metrics")

# The used-bytes word and its padding that start every multiprocess file.
_MMAP_HEADER = 8

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Handler durations, seconds: fast HTTP calls up to handlers near the default 30 s timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Attempts an event used before it went dead (max_attempts defaults to 5).
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process records to, when one is set."""
    return os.environ.get(MULTIPROC_ENV) or None


class _LabelCap:
    """Lets through the first `limit` distinct values of a label, then maps new ones to other.

    Event types come from the database: a producer that invents types (or a bug that puts an id
    in one) must not create unbounded series.
    """

    def __init__(self, limit: int = 200, length: int = 100) -> None:
        self.limit = limit
        self.length = length
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        value = value[: self.length]
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class WorkerMetrics:
    """The counters a worker process keeps. Create one per process, after the directory is set.

    The metrics are not registered in prometheus-client's default registry: in multiprocess mode
    they are collected from the directory's files, never from this process's memory.

    ``handled`` runs once per event, and a multiprocess value costs a lock and a write to a
    memory-mapped file (some 6 µs for a counter and a histogram, a tenth of a no-op event's whole
    cost). So handler outcomes are summed in a dict and written every ``flush_interval`` seconds
    by a thread (and at exit): a scrape lags by at most that, and a process killed with SIGKILL
    loses at most that much of its counts. Deaths and expired leases are rare: written at once.
    """

    def __init__(self, *, flush_interval: float = 1.0) -> None:
        # prometheus-client picks its value class (memory-mapped files or not) when it is
        # imported. A worker process forked from the supervisor inherited it imported before
        # the supervisor set the directory: pick again, now that the directory is set.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self._event_type = _LabelCap()
        self._aggregate_type = _LabelCap()
        self._destination = _LabelCap()
        self.flush_interval = flush_interval
        self.dispatched = Counter(
            "dispatchbox_events_dispatched",
            "Handler runs that finished, by event type and outcome "
            "(done, failed, timeout, permanent).",
            ["event_type", "outcome"],
            registry=None,
        )
        self.duration = Histogram(
            "dispatchbox_handler_duration_seconds",
            "How long handlers ran, by event type, whatever the outcome.",
            ["event_type"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.dead = Counter(
            "dispatchbox_dead_events",
            "Events that went dead, by event type, aggregate type and destination.",
            ["event_type", "aggregate_type", "destination"],
            registry=None,
        )
        self.attempts_before_dead = Histogram(
            "dispatchbox_event_attempts_before_dead",
            "Attempts an event used before it went dead, by event type.",
            ["event_type"],
            buckets=ATTEMPT_BUCKETS,
            registry=None,
        )
        self.lease_expired = Counter(
            "dispatchbox_lease_expired",
            "Events taken back by the reaper after their worker stopped renewing the lease.",
            ["event_type"],
            registry=None,
        )
        self.processes = Gauge(
            "dispatchbox_worker_processes",
            "Worker processes running (each live process counts 1).",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._bounds = (*DURATION_BUCKETS, float("inf"))
        # (event type, outcome) -> [count in each duration bucket..., sum of seconds]
        self._pending: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self) -> None:
        """This process is live; start writing outcomes in the background."""
        self.processes.set(1)
        if self._thread is None and self.flush_interval > 0:
            self._thread = threading.Thread(
                target=self._flush_loop, name="dispatchbox-metrics", daemon=True
            )
            self._thread.start()
            atexit.register(self.close)

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # never let metrics take a worker down; say it once
                logger.exception("metrics_flush_failed")
                return

    def handled(self, event_type: str, outcome: str, seconds: float) -> None:
        bucket = bisect.bisect_left(self._bounds, seconds)
        key = (event_type, outcome)
        with self._lock:
            acc = self._pending.get(key)
            if acc is None:
                acc = self._pending[key] = [0.0] * (len(self._bounds) + 1)
            acc[bucket] += 1
            acc[-1] += seconds

    def flush(self) -> None:
        """Write the outcomes summed since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (event_type, outcome), acc in pending.items():
            kind = self._event_type(event_type)
            counts = acc[:-1]
            self.dispatched.labels(kind, outcome).inc(sum(counts))
            child = self.duration.labels(kind)
            buckets = getattr(child, "_buckets", None)
            total = getattr(child, "_sum", None)
            if buckets is None or total is None or len(buckets) != len(counts):
                # prometheus-client changed its insides: observe one by one, at the bucket's
                # bound (the bucket counts stay exact, the sum becomes an estimate).
                for bound, n in zip(self._bounds, counts, strict=True):
                    for _ in range(int(n)):
                        child.observe(bound if bound != float("inf") else acc[-1] / sum(counts))
                continue
            # Histogram.observe(x) adds x to the sum and 1 to the first bucket whose bound is
            # >= x (buckets are cumulated when collected): the same, n at a time.
            total.inc(acc[-1])
            for value, n in zip(buckets, counts, strict=True):
                if n:
                    value.inc(n)

    def went_dead(
        self, event_type: str, aggregate_type: str, attempts: int, destination: str = ""
    ) -> None:
        kind = self._event_type(event_type)
        where = self._destination(destination) if destination else ""
        self.dead.labels(kind, self._aggregate_type(aggregate_type), where).inc()
        self.attempts_before_dead.labels(kind).observe(attempts)

    def lease_was_expired(self, event_type: str) -> None:
        self.lease_expired.labels(self._event_type(event_type)).inc()


# -- the supervisor's directory -----------------------------------------------------------------


class MetricsDirectory:
    """The multiprocess directory one supervisor owns.

    With ``path`` (or ``PROMETHEUS_MULTIPROC_DIR`` already set) that directory is used and its
    old files removed; otherwise a private temporary directory is created and removed again on
    close. Either way the variable is set in this process's environment, which the worker
    processes (started with "spawn") inherit before they import prometheus-client.
    """

    def __init__(self, path: str | None = None) -> None:
        given = path or multiprocess_dir()
        if given:
            os.makedirs(given, exist_ok=True)
            self.path = given
            self.owned = False
            self._clean()
        else:
            self.path = tempfile.mkdtemp(prefix="dispatchbox-metrics-")
            self.owned = True
        os.environ[MULTIPROC_ENV] = self.path

    def _clean(self) -> None:
        # Files left by an earlier run would add its counts to ours (and its dead pids' gauges).
        for name in os.listdir(self.path):
            if name.endswith(".db"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.path, name))

    def process_exited(self, pid: int) -> None:
        """A worker process ended: drop its live gauges; its counters keep counting in totals."""
        try:
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            logger.warning("metrics_mark_dead_failed pid=%d error=%s", pid, exc)

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


class _WorkerCounters:
    """The worker processes' files, summed; nothing while the directory does not exist yet
    (``serve`` may start before the worker that creates it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        if not os.path.isdir(self.path):
            return []
        families: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            _files_with_values(self.path), accumulate=True
        )
        return families


def _files_with_values(path: str) -> list[str]:
    """The directory's metric files, without those still empty.

    prometheus-client creates a file empty and sizes it a moment later; a scrape in between (or
    a process killed in between) would fail to parse it and answer 500. An empty file holds no
    value, so leaving it out loses nothing.
    """
    files = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.endswith(".db"):
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:  # a live gauge's file, removed as its process died
                continue
            if size >= _MMAP_HEADER:
                files.append(entry.path)
    return files


def build_registry(
    dsn: str | None,
    *,
    multiprocess_path: str | None = None,
    database: DatabaseCollector | None = None,
) -> CollectorRegistry:
    """A registry with the worker processes' counters (when a directory is given) and the
    database gauges (when a DSN or collector is given)."""
    registry = CollectorRegistry()
    if multiprocess_path:
        registry.register(_WorkerCounters(multiprocess_path))
    if database is None and dsn is not None:
        database = DatabaseCollector(dsn)
    if database is not None:
        registry.register(database)
    return registry
