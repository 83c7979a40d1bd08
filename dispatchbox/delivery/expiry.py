"""Expiry: an event not delivered by its ``expires_at`` (publish) or by ``created_at + ttl`` (its
handler's) goes dead with last_error ``expired: ...`` and is never delivered late.

The worker judges expiry when it claims an event and again just before its handler starts (an
event claimed a moment before its expiry may wait in the local queue past it). Times are the
database's: the worker reads the database clock now and then and keeps its offset from the
local clock, so hosts with skewed clocks still agree, without a clock read per event.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Protocol

import psycopg

from dispatchbox.data import delivery as data
from dispatchbox.dispatcher import Dispatcher
from dispatchbox.errors import EventExpired

# How often the offset between the local and the database clock is measured again (seconds).
CLOCK_RESYNC_SECONDS = 60.0


class Expirable(Protocol):
    @property
    def event_type(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime | None: ...


class Expiry:
    """The handlers' ttls and the database clock, for one worker process."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.ttls = {s.event_type: s.ttl for s in dispatcher.specs() if s.ttl is not None}
        self.offset = 0.0  # database clock minus local clock, seconds
        self._synced_at = -float("inf")  # time.monotonic() of the last measurement

    async def sync_clock(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Measure the database clock's offset, at most every CLOCK_RESYNC_SECONDS."""
        if time.monotonic() - self._synced_at < CLOCK_RESYNC_SECONDS:
            return
        before = time.time()
        db_now: datetime = await data.db_clock(conn)
        after = time.time()
        self.offset = db_now.timestamp() - (before + after) / 2
        self._synced_at = time.monotonic()

    def deadline(self, event: Expirable) -> float | None:
        """When the event expires, as a Unix time on the database clock; None: never."""
        ttl = self.ttls.get(event.event_type)
        at = event.expires_at
        deadline = None if at is None else at.timestamp()
        if ttl is not None:
            by_ttl = event.created_at.timestamp() + ttl
            deadline = by_ttl if deadline is None else min(deadline, by_ttl)
        return deadline

    def check(self, event: Expirable) -> None:
        """Raise EventExpired if the event's time is up (the caller must not deliver it)."""
        if event.expires_at is None and event.event_type not in self.ttls:
            return  # the common case: nothing can expire
        deadline = self.deadline(event)
        if deadline is not None and deadline <= time.time() + self.offset:
            raise EventExpired(_reason(event, self.ttls.get(event.event_type), deadline))


def _reason(event: Expirable, ttl: float | None, deadline: float) -> str:
    at = datetime.fromtimestamp(deadline, tz=event.created_at.tzinfo).isoformat()
    if event.expires_at is not None and event.expires_at.timestamp() == deadline:
        return f"not delivered by its expires_at {at}"
    return f"not delivered within its handler's ttl of {ttl:g}s (by {at})"
