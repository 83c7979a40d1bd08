"""The records OutboxRepository returns: dead events, their history, stats, redrive counts and
audit entries. Plain frozen dataclasses, each with ``to_json`` for the CLI and the HTTP API.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def default_actor() -> str:
    """The OS user running this process (what the CLI records as the actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _record_json(record: Any) -> dict[str, Any]:
    """A flat record dataclass as JSON-ready values (datetimes as ISO 8601)."""
    return {k: _jsonable(v) for k, v in asdict(record).items()}


@dataclass(frozen=True, slots=True)
class DeadEvent:
    """One dead event as listed."""

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    headers: Any  # a JSON object when written by publish(); any JSON when written by hand
    status: str
    attempts: int
    max_attempts: int
    priority: int
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    dead_at: datetime | None
    redrive_count: int
    last_redriven_at: datetime | None
    last_redriven_by: str | None
    error_fingerprint: str | None
    # The destination whose delivery failed last (migration 0007); None before any failure.
    destination: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failed attempt from the error history (outbox_event_error)."""

    id: int
    attempt: int
    worker: str | None
    started_at: datetime | None
    finished_at: datetime
    error_type: str
    message: str
    traceback: str | None

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One event in any state, with its whole error history (oldest first)."""

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    headers: Any  # a JSON object when written by publish(); any JSON when written by hand
    status: str
    attempts: int
    max_attempts: int
    priority: int
    idempotency_key: str | None
    next_attempt_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime
    done_at: datetime | None
    dead_at: datetime | None
    redrive_count: int
    last_redriven_at: datetime | None
    last_redriven_by: str | None
    error_fingerprint: str | None
    destination: str | None = None
    errors: list[ErrorRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__ if k != "errors"}
        out["errors"] = [e.to_json() for e in self.errors]
        return out


@dataclass(frozen=True, slots=True)
class GroupStat:
    """Dead events sharing an event type, aggregate type or destination (None: no destination
    recorded)."""

    key: str | None
    count: int
    first_seen: datetime | None
    last_seen: datetime | None

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Dead events sharing a normalised error (see dispatchbox.fingerprint)."""

    fingerprint: str
    signature: str | None
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    example_id: int
    example_error: str | None

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class DeadEventStats:
    """Totals, and the groupings asked for (None when not asked), most numerous first."""

    total: int
    oldest_dead_at: datetime | None
    newest_dead_at: datetime | None
    by_event_type: list[GroupStat] | None = None
    by_aggregate_type: list[GroupStat] | None = None
    by_error: list[ErrorGroup] | None = None
    by_destination: list[GroupStat] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "oldest_dead_at": _jsonable(self.oldest_dead_at),
            "newest_dead_at": _jsonable(self.newest_dead_at),
        }
        for name in ("by_event_type", "by_aggregate_type", "by_destination", "by_error"):
            groups = getattr(self, name)
            if groups is not None:
                out[name] = [g.to_json() for g in groups]
        return out


@dataclass(frozen=True, slots=True)
class RedriveCounts:
    """What a redrive by filter did (the SQL function redrive_dead_events returns the same)."""

    processed: int  # redriven: pending again
    skipped: int  # held by another transaction, or no longer dead when reached
    failed: int  # in batches whose update raised (rolled back; a WARNING names the error)

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action on dead events."""

    id: int
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    db_role: str
    actor: str
    action: str
    event_ids: list[int] | None
    filter: dict[str, Any] | None
    affected: int
    outcome: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return _record_json(self)
