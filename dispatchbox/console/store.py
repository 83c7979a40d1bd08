"""ConsoleStore: what the console's pages read and do, over OutboxRepository.

Every read and action an operator already has (list, count, stats, show, retry, redrive by
filter, purge, history) is the repository's own method, so the console, the CLI and the API
agree. The few things only a page needs (a chart, a group's targets and destinations, one event's
audit entries, the payload edit of "edit and redrive") are named queries in
sql/queries/console.sql.

Breakers: the console shows and switches circuit breakers through a BreakerSource when one is
given (the delivery controls provide it); without one the panel says they are not available.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from dispatchbox.data import audit, dead_letters, metrics
from dispatchbox.data import console as data
from dispatchbox.delivery.checksum import payload_sha256
from dispatchbox.errors import EventNotDead
from dispatchbox.filters import DeadEventFilter
from dispatchbox.fingerprint import signature
from dispatchbox.outbox_status import outbox_status
from dispatchbox.records import AuditEntry, GroupStat
from dispatchbox.repository import OutboxRepository

# Hours the overview's chart covers, one bar an hour.
CHART_HOURS = 24
# Seconds one overview reading serves every page that refreshes (each refreshes every 5 s).
OVERVIEW_CACHE_SECONDS = 2.0
# Error groups the overview lists.
OVERVIEW_GROUPS = 10
# Events per shown error group whose destinations the groups page reads (newest first): a group
# no larger is counted exactly, a larger one by this sample (outbox rows read by primary key).
GROUP_DESTINATION_SAMPLE = 500
# Audit entries shown on an event's page.
EVENT_AUDIT_LIMIT = 50
# Edit-and-redrive refuses payloads above this (the form is for fixing a field, not uploads).
MAX_PAYLOAD_BYTES = 1_000_000


class BreakerSource(Protocol):
    """What the console needs from circuit breakers (the delivery controls implement it)."""

    def list_breakers(self) -> Sequence[Any]:
        """Objects with ``name``, ``state`` and optionally ``since`` / ``failures``."""

    def open_breaker(self, name: str, *, actor: str) -> bool:
        """Open one breaker by hand; False when there is no breaker of that name."""

    def close_breaker(self, name: str, *, actor: str) -> bool:
        """Close one breaker by hand; False when there is no breaker of that name."""


@dataclass(frozen=True, slots=True)
class Group:
    """Dead events sharing an error fingerprint: how many, when, an example, what they hit."""

    fingerprint: str
    signature: str | None
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    example_id: int
    example_error: str | None
    targets: list[tuple[str, int]]
    # Where they died (None: before migration 0007); read only for the grouped list page. For a
    # group above GROUP_DESTINATION_SAMPLE events, the counts are of its newest that many.
    destinations: list[tuple[str | None, int]] = field(default_factory=list)
    destinations_sampled: bool = False


@dataclass(frozen=True, slots=True)
class Groups:
    """The error groups of a filter, most numerous first, and the total they add up to."""

    total: int
    groups: list[Group]
    by_type: list[GroupStat]


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview page: counts by state, groupings, the chart, the oldest pending age."""

    pending: int
    running: int
    dead: int
    oldest_pending_age_seconds: float
    oldest_dead_at: datetime | None
    expired_leases: int
    groups: Groups
    deaths: list[tuple[datetime, int]]
    # Dead events per destination (None: died before migration 0007), most numerous first.
    by_destination: list[tuple[str | None, int]] = field(default_factory=list)
    # The counts that are planner estimates (more than 10,000 events in that state).
    estimated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EditResult:
    """An edit-and-redrive: the audit row it wrote and the diff it recorded."""

    audit_id: int
    diff: list[str] = field(default_factory=list)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def payload_checksum(payload: Any) -> str:
    """The payload's SHA-256 as publish records it (outbox_event.payload_sha256, migration 0009):
    an edit stores the new one, and the audit entry keeps both."""
    return payload_sha256(payload)


def payload_diff(before: Any, after: Any) -> list[str]:
    """A unified diff of two payloads, each pretty-printed with sorted keys."""

    def lines(value: Any) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return list(
        difflib.unified_diff(lines(before), lines(after), "before", "after", lineterm="", n=2)
    )


class ConsoleStore:
    """The console's reads and actions on one connection pool."""

    def __init__(self, pool: ConnectionPool[Any], *, breakers: BreakerSource | None = None) -> None:
        self.pool = pool
        self.repo = OutboxRepository(pool)
        self.breakers = breakers
        self._overview: tuple[float, Overview] | None = None
        self._overview_lock = threading.Lock()

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        """A read-only snapshot transaction on a pooled connection."""
        with self.pool.connection() as conn:
            saved = (conn.autocommit, conn.prepare_threshold)
            conn.autocommit = True
            conn.prepare_threshold = None  # planned with the actual filter values
            try:
                with conn.transaction():
                    data.read_snapshot(conn)
                    yield conn
            finally:
                conn.prepare_threshold = saved[1]
                if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                    conn.autocommit = saved[0]

    # -- reads -------------------------------------------------------------------------------

    def overview(self) -> Overview:
        """The overview's figures, read at most once every OVERVIEW_CACHE_SECONDS however many
        open pages refresh: its error groups read every dead event's mirror row."""
        with self._overview_lock:
            cached = self._overview
            if cached is not None and time.monotonic() - cached[0] < OVERVIEW_CACHE_SECONDS:
                return cached[1]
            fresh = self._read_overview()
            self._overview = (time.monotonic(), fresh)
            return fresh

    def _read_overview(self) -> Overview:
        with self._read() as conn:
            # As `db status` reads them: pending and running exact up to 10,000 and estimated
            # above, so the page costs the same on an outbox of ten million events.
            status = outbox_status(conn)
            states = status.values
            groups = self._groups(conn, DeadEventFilter(), top=OVERVIEW_GROUPS)
            rows = data.deaths_over_time(conn, CHART_HOURS)
            by_destination = metrics.dead_by_destination(conn)
        return Overview(
            pending=int(states["pending"]),
            running=int(states["running"]),
            dead=groups.total,
            oldest_pending_age_seconds=float(states["oldest_pending_age_seconds"] or 0),
            oldest_dead_at=states["oldest_dead_at"],
            expired_leases=int(states["expired_leases"]),
            groups=groups,
            deaths=[(r["bucket"], int(r["count"])) for r in rows],
            by_destination=[(r["destination"], int(r["count"])) for r in by_destination],
            estimated=status.estimated,
        )

    def error_groups(self, flt: DeadEventFilter, *, top: int, destinations: bool = False) -> Groups:
        """The ``top`` error groups of the dead events that match, with the total of all; with
        ``destinations``, also where the events of each group shown died."""
        with self._read() as conn:
            return self._groups(conn, flt, top=top, destinations=destinations)

    @staticmethod
    def _groups(
        conn: psycopg.Connection[Any],
        flt: DeadEventFilter,
        *,
        top: int,
        destinations: bool = False,
    ) -> Groups:
        summary = flt.summary_serves
        rows = data.error_groups(conn, flt)
        merged: dict[str, dict[str, Any]] = {}
        types: dict[str, dict[str, Any]] = {}
        for row in rows:
            n = int(row["count"])
            group = merged.setdefault(
                row["fingerprint"],
                {"count": 0, "first": None, "last": None, "example": None, "targets": []},
            )
            group["count"] += n
            group["first"] = _earliest(group["first"], row["first_seen"])
            group["last"] = _latest(group["last"], row["last_seen"])
            group["example"] = min(x for x in (group["example"], row["example_id"]) if x)
            group["targets"].append((row["target"], n))
            kind = types.setdefault(row["target"], {"count": 0, "first": None, "last": None})
            kind["count"] += n
            kind["first"] = _earliest(kind["first"], row["first_seen"])
            kind["last"] = _latest(kind["last"], row["last_seen"])
        ranked = sorted(merged.items(), key=lambda kv: (-kv[1]["count"], kv[0]))[:top]
        examples = data.errors_of(conn, [g["example"] for _, g in ranked])
        # A second query for the groups shown only (the summary knows every group's destinations
        # exactly; otherwise a bounded sample). Filtered by destination, every event of a group
        # died there: nothing to read.
        places: dict[str, list[tuple[str | None, int]]] = {}
        if destinations and ranked and flt.destination is not None:
            places = {key: [(flt.destination, g["count"])] for key, g in ranked}
        elif destinations and ranked:
            keys = [key for key, _ in ranked]
            for r in data.group_destinations(conn, flt, keys, GROUP_DESTINATION_SAMPLE):
                places.setdefault(r["fingerprint"], []).append((r["destination"], int(r["count"])))
        groups = []
        for key, g in ranked:
            error = examples.get(g["example"])
            groups.append(
                Group(
                    fingerprint=key,
                    signature=signature(error) if error is not None else None,
                    count=g["count"],
                    first_seen=g["first"],
                    last_seen=g["last"],
                    example_id=g["example"],
                    example_error=error,
                    targets=sorted(g["targets"], key=lambda t: (-t[1], t[0])),
                    destinations=sorted(places.get(key, []), key=lambda d: (-d[1], d[0] or "")),
                    destinations_sampled=destinations
                    and not summary
                    and flt.destination is None
                    and g["count"] > GROUP_DESTINATION_SAMPLE,
                )
            )
        by_type = [
            GroupStat(key=k, count=v["count"], first_seen=v["first"], last_seen=v["last"])
            for k, v in sorted(types.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
        ]
        return Groups(
            total=sum(g["count"] for g in merged.values()), groups=groups, by_type=by_type
        )

    def count_capped(self, flt: DeadEventFilter, cap: int) -> int:
        """How many dead events match, but no more than cap + 1 (a page shows "cap+")."""
        with self._read() as conn:
            return data.dead_count_capped(conn, flt, cap)

    def event_audit(self, event_id: int) -> list[AuditEntry]:
        with self._read() as conn:
            rows = data.event_audit(conn, event_id, EVENT_AUDIT_LIMIT)
        return [AuditEntry(**row) for row in rows]

    def breaker_states(self) -> list[Any] | None:
        """The breakers' states, or None when this installation has no breakers to show."""
        if self.breakers is None:
            return None
        return list(self.breakers.list_breakers())

    # -- actions -----------------------------------------------------------------------------

    def edit_and_redrive(self, event_id: int, payload: Any, *, actor: str) -> EditResult | None:
        """Replace a dead event's payload and redrive it, in one transaction, audited as a retry
        whose details carry the before/after diff and both checksums. None when there is no
        such event; EventNotDead when it is not dead (nothing changes then)."""
        text = json.dumps(payload, ensure_ascii=False)
        if len(text.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes")
        with self.pool.connection() as conn:
            with conn.transaction():
                row = data.payload_replace(conn, event_id, text)
                if row is not None:
                    before = row["before"]
                    redriven = dead_letters.redrive_ids(conn, [event_id], actor=actor)
                    assert redriven, "the row is locked by this transaction and dead"
                    diff = payload_diff(before, payload)
                    audit_id = audit.insert(
                        conn,
                        actor=actor,
                        action="retry",
                        affected=1,
                        event_ids=[event_id],
                        details={
                            "edited_payload": True,
                            "diff": diff,
                            "checksum_before": payload_checksum(before),
                            "checksum_after": payload_checksum(payload),
                        },
                    )
                    dead_letters.notify_workers(conn)
                    return EditResult(audit_id=audit_id, diff=diff)
            found = dead_letters.statuses(conn, [event_id])
        if not found:
            return None
        raise EventNotDead(f"event {event_id} is {found[event_id]}, not dead; nothing changed")
