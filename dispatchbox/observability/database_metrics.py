"""The database gauges of /metrics (``DatabaseCollector``): the state of the outbox read from
PostgreSQL at scrape time, through dispatchbox.data.metrics.

Dead events now by type, pending and running counts, the oldest due pending event's age (lag),
the oldest dead event's age, recent deaths by error fingerprint, where redriven events ended,
the alert state, breakers, blocked aggregates and what holds back vacuum. Results are cached for
a few seconds behind a lock, so any number of scrapers costs one set of queries per period; a
scrape never fails because the database is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dispatchbox import db
from dispatchbox.data import metrics as data
from dispatchbox.data.connection import ReconnectingConnection
from dispatchbox.delivery import ordering
from dispatchbox.errors import DatabaseUnreachable
from dispatchbox.events import EventStatus
from dispatchbox.outbox_status import outbox_status

logger = logging.getLogger("dispatchbox.metrics")

# A label value standing for every value beyond a cap.
OTHER = "other"


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


REDRIVE_OUTCOMES = {
    EventStatus.DONE: "done",
    EventStatus.DEAD: "dead_again",
    EventStatus.PENDING: "in_flight",
    EventStatus.RUNNING: "in_flight",
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
        self._db = ReconnectingConnection(
            dsn, application_name="dispatchbox-metrics", connect_timeout=connect_timeout
        )
        self._cached: _Snapshot | None = None
        self._failing = False

    # The registry asks collectors without describe() nothing at registration time.

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
            conn = self._db.get()
            with conn.transaction():
                data.snapshot(conn)
                health = _health_values(conn)
                by_type = data.dead_by_type(conn)
                inflow = data.dead_inflow(conn, self.inflow_window)
                redriven = data.redriven(conn)
                alerts = data.alert_state(conn)
                by_destination = data.dead_by_destination(conn)
                breakers = data.breakers(conn)
                blocked = ordering.blocked_aggregates(conn)
                cleanup = data.cleanup_horizon(conn) or {}
        except (DatabaseUnreachable, psycopg.Error) as exc:
            self._db.close()
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
