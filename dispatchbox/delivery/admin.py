"""An operator's actions on breakers: list, open, close, reset, each open/close/reset written to
the audit trail (outbox_dead_letter_audit, actions breaker_open / breaker_close / breaker_reset)
in the transaction that made the change, with the operator's name as its actor.

Used by `dispatchbox breakers` and the HTTP API; both hand in a psycopg connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import audit
from dispatchbox.data import delivery as data
from dispatchbox.errors import DispatchboxError

# dispatchbox_circuit_state's values.
STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerNotFound(DispatchboxError, LookupError):
    """No destination of that name has a breaker (no worker configured it yet)."""


class BreakerStateError(DispatchboxError, ValueError):
    """The breaker is already in the state the action asks for; nothing changed."""


@dataclass(frozen=True)
class Breaker:
    """A breaker as `breakers list` shows it."""

    destination: str
    state: str  # closed | open | half_open
    manual: bool  # opened by an operator: only an operator closes it
    consecutive_failures: int
    window_calls: int
    window_failures: int
    failure_threshold: int
    failure_rate: float | None
    cooldown_seconds: float
    max_cooldown_seconds: float
    reopens: int
    opened_at: datetime | None
    open_until: datetime | None
    closed_at: datetime | None
    changed_at: datetime
    transitions: int
    last_error: str | None
    health_check: bool
    replay_dead: bool
    rate_limit: float | None
    burst: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()
        }


def list_breakers(conn: psycopg.Connection[Any]) -> list[Breaker]:
    return [Breaker(**row) for row in data.breaker_list(conn)]


def _locked(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    row = data.breaker_lock(conn, name)
    if row is None:
        raise BreakerNotFound(
            f"no breaker for destination {name!r}; a worker creates it when it starts with "
            "dispatcher.destination(...); see `dispatchbox breakers list`"
        )
    return row


def _audit(conn: psycopg.Connection[Any], actor: str, action: str, details: dict[str, Any]) -> None:
    audit.insert(conn, actor=actor, action=action, affected=1, details=details)


def open_breaker(conn: psycopg.Connection[Any], name: str, *, actor: str) -> None:
    """Open by hand: workers stop claiming the destination's events until an operator closes
    it (no probe closes a breaker opened by hand). BreakerStateError if it is open by hand."""
    with conn.transaction():
        before = _locked(conn, name)
        if data.breaker_open_manual(conn, name) is None:
            raise BreakerStateError(f"breaker {name!r} is already open (by an operator)")
        _audit(conn, actor, "breaker_open", {"destination": name, "was": before["state"]})


def close_breaker(conn: psycopg.Connection[Any], name: str, *, actor: str) -> None:
    """Close an open or half-open breaker, as a successful probe would (a replay follows when
    the destination has replay_dead_on_recovery). BreakerStateError if it is closed."""
    with conn.transaction():
        before = _locked(conn, name)
        if data.breaker_close_manual(conn, name) is None:
            raise BreakerStateError(f"breaker {name!r} is already closed")
        _audit(conn, actor, "breaker_close", {"destination": name, "was": before["state"]})


def reset_breaker(conn: psycopg.Connection[Any], name: str, *, actor: str) -> None:
    """Closed, with its counters, growing cool-down and outage forgotten (no replay)."""
    with conn.transaction():
        before = _locked(conn, name)
        data.breaker_reset(conn, name)
        _audit(conn, actor, "breaker_reset", {"destination": name, "was": before["state"]})
