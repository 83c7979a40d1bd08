"""Backpressure: publish fails fast with BacklogFullError when the pending backlog of the event's
type is above the limit set for it, so a producer learns of a stalled consumer at once instead of
filling the outbox for hours.

Checked cheaply: no count(*) per publish. The workers keep an estimate in ``outbox_backlog``
(pending events per event type, recounted by one process at a time at most every
REFRESH_SECONDS, and only while some publisher has a limit); publish reads that small table at
most every ``cache_seconds`` per process and database, and compares in memory. The estimate may
be a few seconds old: a limit is a guard rail, not an exact quota.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from dispatchbox.data import delivery as data
from dispatchbox.errors import BacklogFullError, ConfigurationError

# The workers recount at most this often (seconds), cluster-wide.
REFRESH_SECONDS = 1.0
# Without a limit for its type, publish does nothing more than one dict look-up.
_limits: dict[str, int] = {}
_default: list[int | None] = [None]
_cache_seconds: list[float] = [1.0]
# (host, port, dbname) -> (monotonic time read, {event_type: pending})
_estimates: dict[tuple[str, int, str], tuple[float, dict[str, int]]] = {}
_lock = threading.Lock()


def set_backlog_limit(event_type: str | None, limit: int | None) -> None:
    """Refuse publishing ``event_type`` (every type without a limit of its own when None) while
    more than ``limit`` events of that type are pending; ``limit=None`` removes the limit."""
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ConfigurationError(f"a backlog limit must be a whole number >= 0, got {limit!r}")
    with _lock:
        if event_type is None:
            _default[0] = limit
        elif limit is None:
            _limits.pop(event_type, None)
        else:
            _limits[event_type] = limit


def set_cache_seconds(seconds: float) -> None:
    """How long one process trusts its copy of the estimate (default 1 s)."""
    if not seconds >= 0:
        raise ConfigurationError("the backlog cache period must be >= 0 seconds")
    _cache_seconds[0] = float(seconds)


def clear() -> None:
    """Forget every limit and cached estimate (tests, reconfiguration)."""
    with _lock:
        _limits.clear()
        _default[0] = None
        _estimates.clear()


def check(conn: psycopg.Connection[Any], event_types: Iterable[str]) -> None:
    """Raise BacklogFullError when an event type's pending backlog is above its limit."""
    if not _limits and _default[0] is None:
        return
    limited = {t: lim for t in set(event_types) if (lim := _limits.get(t, _default[0])) is not None}
    if not limited:
        return
    pending = _estimate(conn, limited)
    for event_type, limit in sorted(limited.items()):
        if pending.get(event_type, 0) > limit:
            raise BacklogFullError(
                f"backlog of {event_type!r} is full: about {pending[event_type]} pending, "
                f"limit {limit}; nothing was published"
            )


def _estimate(conn: psycopg.Connection[Any], wanted: dict[str, int]) -> dict[str, int]:
    info = conn.info
    key = (info.host, info.port, info.dbname)
    now = time.monotonic()
    cached = _estimates.get(key)
    if cached is not None and now - cached[0] < _cache_seconds[0]:
        return cached[1]
    pending = data.backlog_read(conn)
    missing = sorted(set(wanted) - set(pending))
    if missing:
        # Ask the workers to count these types too. In the caller's transaction: rolled back
        # with it, the request is simply made again next time.
        data.backlog_register(conn, missing)
    _estimates[key] = (now, pending)
    return pending


async def refresh(conn: psycopg.AsyncConnection[Any]) -> int:
    """Recount the registered event types if the estimate is older than REFRESH_SECONDS and no
    other process is at it; returns how many types were written (0: not due)."""
    return await data.backlog_refresh(conn, REFRESH_SECONDS)
