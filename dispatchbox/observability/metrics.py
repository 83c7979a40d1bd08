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
* The state of the outbox is read from PostgreSQL at scrape time (``DatabaseCollector``): dead
  events now by type, pending and running counts, the oldest due pending event's age (lag), the
  oldest dead event's age, recent deaths by error fingerprint, where redriven events ended, and
  the alert state. Results are cached for a few seconds behind a lock, so any number of
  scrapers costs one set of queries per period.

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
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dispatchbox import db, queries
from dispatchbox.delivery import ordering
from dispatchbox.errors import DatabaseUnreachable
from dispatchbox.outbox_status import outbox_status

logger = logging.getLogger("dispatchbox.metrics")

# The used-bytes word and its padding that start every multiprocess file.
_MMAP_HEADER = 8

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"

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


# -- scrape-time gauges from the database -------------------------------------------------------


@dataclass
class _Snapshot:
    ok: bool
    taken: float
    seconds: float = 0.0
    health: dict[str, Any] = field(default_factory=dict)
    dead_by_type: list[dict[str, Any]] = field(default_factory=list)
    inflow: list[dict[str, Any]] = field(default_factory=list)
    redriven: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_by_destination: list[dict[str, Any]] = field(default_factory=list)
    breakers: list[dict[str, Any]] = field(default_factory=list)
    blocked: dict[str, int] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)


def _health_values(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The health gauges' values at a cost that does not grow with the outbox: pending and
    running as `db status` reads them (estimated above 10,000), dead and the oldest death exact
    from the dead-letter summary, the oldest pending age and expired leases exact."""
    values = dict(outbox_status(conn).values)
    oldest_dead = values.pop("oldest_dead_at", None)
    values["oldest_dead_age_seconds"] = (
        max(0.0, (datetime.now(UTC) - oldest_dead).total_seconds()) if oldest_dead else 0.0
    )
    return values


def cleanup_gauges(row: dict[str, Any]) -> Iterator[Metric]:
    """What holds back vacuum of the outbox (the view outbox_cleanup_horizon)."""
    for name, text, key in (
        (
            "dispatchbox_cleanup_held_seconds",
            "Age of the oldest snapshot or prepared transaction holding back vacuum (0: none).",
            "held_seconds",
        ),
        (
            "dispatchbox_cleanup_held_xids",
            "Transactions since the oldest xmin held by a snapshot, prepared xact or slot.",
            "held_xids",
        ),
        (
            "dispatchbox_outbox_dead_tuples",
            "Dead row versions in outbox_event not yet vacuumed (pg_stat_user_tables).",
            "outbox_dead_tuples",
        ),
    ):
        yield GaugeMetricFamily(name, text, value=float(row.get(key) or 0))


REDRIVE_OUTCOMES = {
    "done": "done",
    "dead": "dead_again",
    "pending": "in_flight",
    "running": "in_flight",
}


class DatabaseCollector:
    """Gauges read from PostgreSQL when scraped, cached ``cache_seconds``.

    A scrape never fails because the database is down: ``dispatchbox_database_up`` says 0 and
    the database gauges are left out (absent, not zero, so alerts on them do not resolve).
    """

    def __init__(
        self,
        dsn: str,
        *,
        cache_seconds: float = 5.0,
        inflow_window: float = 900.0,
        top_fingerprints: int = 10,
        max_type_series: int = 500,
        connect_timeout: int = 3,
    ) -> None:
        self.dsn = dsn
        # Scrapes within this many seconds of the last query share its result.
        self.cache_seconds = cache_seconds
        # dispatchbox_dead_inflow_by_fingerprint counts deaths this many seconds back.
        self.inflow_window = inflow_window
        # Fingerprints named in the inflow gauge; the others are summed as "other".
        self.top_fingerprints = top_fingerprints
        # (event type, aggregate type) pairs named in the current-dead gauge; the rest "other".
        self.max_type_series = max_type_series
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._cached: _Snapshot | None = None
        self._failing = False

    # The registry asks collectors without describe() nothing at registration time.

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._disconnect()
            self._conn = db.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name="dispatchbox-metrics",
                prepare_threshold=None,
            )
        return self._conn

    def snapshot(self) -> _Snapshot:
        """The cached snapshot, or a new one when it is older than cache_seconds."""
        with self._lock:
            now = time.monotonic()
            cached = self._cached
            if cached is not None and now - cached.taken < self.cache_seconds:
                return cached
            self._cached = self._query(now)
            return self._cached

    def _query(self, now: float) -> _Snapshot:
        started = time.perf_counter()
        try:
            conn = self._connection()
            with conn.transaction():
                queries.execute(conn, "metrics_snapshot")
                health = _health_values(conn)
                by_type = queries.fetch_all(conn, "metrics_dead_by_type")
                inflow = queries.fetch_all(
                    conn, "metrics_dead_inflow", {"window": self.inflow_window}
                )
                redriven = queries.fetch_all(conn, "metrics_redriven")
                alerts = queries.fetch_all(conn, "metrics_alert_state")
                by_destination = queries.fetch_all(conn, "metrics_dead_by_destination")
                breakers = queries.fetch_all(conn, "metrics_breakers")
                blocked = ordering.blocked_aggregates(conn)
                cleanup = queries.fetch_one(conn, "cleanup_horizon") or {}
        except (DatabaseUnreachable, psycopg.Error) as exc:
            self._disconnect()
            reason = db.redact(" ".join(str(exc).split()), self.dsn)[:300]
            if not self._failing:
                logger.warning("metrics_database_unavailable error=%s", reason)
            self._failing = True
            return _Snapshot(ok=False, taken=now)
        if self._failing:
            logger.info("metrics_database_available_again")
        self._failing = False
        return _Snapshot(
            ok=True,
            taken=now,
            seconds=time.perf_counter() - started,
            health=health,
            dead_by_type=by_type,
            inflow=inflow,
            redriven=redriven,
            alerts=alerts,
            dead_by_destination=by_destination,
            breakers=breakers,
            blocked=blocked,
            cleanup=cleanup,
        )

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield GaugeMetricFamily(
            "dispatchbox_database_up",
            "1 when the last metrics query reached PostgreSQL, 0 when it did not.",
            value=1 if snap.ok else 0,
        )
        if not snap.ok:
            return
        yield GaugeMetricFamily(
            "dispatchbox_metrics_query_seconds",
            "How long the last scrape's database queries took.",
            value=snap.seconds,
        )
        yield from self._health(snap.health)
        yield self._dead_current(snap.dead_by_type)
        yield self._dead_by_destination(snap.dead_by_destination)
        yield self._inflow(snap.inflow)
        yield self._redriven(snap.redriven)
        yield from self._alerts(snap.alerts)
        yield from _breakers(snap.breakers)
        blocked = GaugeMetricFamily(
            "dispatchbox_ordering_blocked_aggregates",
            "Aggregates whose later events wait behind a failing one: state waiting (it waits "
            "for a retry) or parked (it is dead and holds parked events; ordering=park).",
            labels=["state"],
        )
        for state in ("waiting", "parked"):
            blocked.add_metric([state], float(snap.blocked.get(state, 0)))
        yield blocked
        yield from cleanup_gauges(snap.cleanup)

    @staticmethod
    def _health(health: dict[str, Any]) -> Iterable[Metric]:
        simple = (
            (
                "dispatchbox_pending_events",
                "Events waiting to be dispatched (due or not): exact up to 10,000, above that "
                "estimated from the planner's statistics (as `db status`).",
                "pending",
            ),
            (
                "dispatchbox_running_events",
                "Events claimed by a worker right now: exact up to 10,000, estimated above.",
                "running",
            ),
            (
                "dispatchbox_oldest_pending_age_seconds",
                "Seconds the oldest due pending event has waited (0 when none): the lag.",
                "oldest_pending_age_seconds",
            ),
            (
                "dispatchbox_oldest_dead_age_seconds",
                "Seconds since the oldest dead event died (0 when none is dead); exact.",
                "oldest_dead_age_seconds",
            ),
            (
                "dispatchbox_expired_leases",
                "Running events whose lease expired and that the reaper has not taken back yet.",
                "expired_leases",
            ),
        )
        for name, text, key in simple:
            yield GaugeMetricFamily(name, text, value=float(health.get(key) or 0))

    def _dead_current(self, rows: list[dict[str, Any]]) -> Metric:
        family = GaugeMetricFamily(
            "dispatchbox_dead_events_current",
            "Events dead now, by event type and aggregate type.",
            labels=["event_type", "aggregate_type"],
        )
        other = 0
        for i, row in enumerate(rows):
            if i < self.max_type_series:
                family.add_metric([row["event_type"], row["aggregate_type"]], row["count"])
            else:
                other += row["count"]
        if other:
            family.add_metric([OTHER, OTHER], other)
        return family

    def _dead_by_destination(self, rows: list[dict[str, Any]]) -> Metric:
        # A family of its own rather than a third label on dead_events_current: that one is
        # read from the narrow fingerprint mirror, which has no destination.
        family = GaugeMetricFamily(
            "dispatchbox_dead_events_by_destination",
            "Events dead now, by the destination whose delivery failed ('' when none recorded).",
            labels=["destination"],
        )
        other = 0
        for i, row in enumerate(rows):
            if i < self.max_type_series:
                family.add_metric([row["destination"] or ""], row["count"])
            else:
                other += row["count"]
        if other:
            family.add_metric([OTHER], other)
        return family

    def _inflow(self, rows: list[dict[str, Any]]) -> Metric:
        family = GaugeMetricFamily(
            "dispatchbox_dead_inflow_by_fingerprint",
            f"Events that died in the last {self.inflow_window:g} seconds and are still dead, "
            f"by error fingerprint (the top {self.top_fingerprints}, the rest as other; "
            "`dispatchbox dead-events stats --by error` names them).",
            labels=["fingerprint"],
        )
        other = 0
        for i, row in enumerate(rows):
            if i < self.top_fingerprints:
                family.add_metric([row["fingerprint"]], row["count"])
            else:
                other += row["count"]
        if other:
            family.add_metric([OTHER], other)
        return family

    @staticmethod
    def _redriven(rows: list[dict[str, Any]]) -> Metric:
        family = GaugeMetricFamily(
            "dispatchbox_redriven_events",
            "Events in the outbox that were redriven at least once, by outcome: done, "
            "dead_again, in_flight (pending or running). Archived events are not counted.",
            labels=["outcome"],
        )
        totals = dict.fromkeys(("done", "dead_again", "in_flight"), 0)
        for row in rows:
            totals[REDRIVE_OUTCOMES.get(row["status"], "in_flight")] += row["count"]
        for outcome, count in totals.items():
            family.add_metric([outcome], count)
        return family

    @staticmethod
    def _alerts(rows: list[dict[str, Any]]) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "dispatchbox_alert_active",
            "1 while an alert's incident is open (announced and not resolved), per channel.",
            labels=["alert", "channel"],
        )
        sent = CounterMetricFamily(
            "dispatchbox_alert_messages",
            "Alert messages a channel accepted, from every process and host.",
            labels=["alert", "channel"],
        )
        failed = CounterMetricFamily(
            "dispatchbox_alert_send_failures",
            "Alert messages a channel did not accept (timeouts, errors).",
            labels=["alert", "channel"],
        )
        for row in rows:
            labels = [row["alert"], row["channel"]]
            active.add_metric(labels, 1 if row["active"] else 0)
            sent.add_metric(labels, row["messages_sent"])
            failed.add_metric(labels, row["send_failures"])
        return (active, sent, failed)


# dispatchbox_circuit_state's values (dispatchbox.delivery.admin.STATE_VALUES).
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _breakers(rows: list[dict[str, Any]]) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "dispatchbox_circuit_state",
        "Each destination's circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["destination"],
    )
    transitions = CounterMetricFamily(
        "dispatchbox_circuit_transitions",
        "State changes of each destination's breaker, by every process and host.",
        labels=["destination"],
    )
    for row in rows:
        state.add_metric([row["destination"]], CIRCUIT_STATES.get(row["state"], 2))
        transitions.add_metric([row["destination"]], row["transitions"])
    return (state, transitions)


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
