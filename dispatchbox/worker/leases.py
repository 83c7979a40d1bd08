"""Keeping leases: the heartbeat that renews the lease of every event this process holds, and
the lease clock that stops this process starting an event whose lease it cannot vouch for.

Every third of the lease, one statement (through the data layer, on the process's upkeep
connection, retried through outages) renews them all. Expired leases of any worker are the
reaper's (dispatchbox/maintenance/reaper.py), which the process runs beside the heartbeat.

The lease clock is why a host cut off from the database does not run events that another host
takes over meanwhile. A lease runs from the database's ``now()`` when the claim or renewal ran,
which is never before this process sent it: so "sent + lease" on the local monotonic clock is a
time before which the lease surely holds (unless the database's clock jumps). A handler starts
only if the lease surely holds for its whole timeout, or for half the lease when the timeout is
longer: then a handler that keeps to its timeout ends before anyone can take its event over.
Otherwise the event is given back unstarted (worker_release, guarded by the lease token, so it
changes nothing when the reaper was first); so is a whole claim whose reply took more than half
the lease (a network partition held it back). Steady renewals every third of the lease leave at
least two thirds, so a healthy process gives nothing back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess

logger = logging.getLogger("dispatchbox.worker")

_UNKNOWN = float("inf")  # a token the clock never saw: not this clock's to stop


class LeaseClock:
    """For each claim's lease token, the monotonic time until which its lease surely holds.

    Written on the event loop (claims, renewals); read by handler threads as they start an
    event (a dict read, atomic)."""

    def __init__(self, lease_seconds: float, worker: str) -> None:
        self.lease = lease_seconds
        self.worker = worker
        self.until: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()  # the give-back count and its log line
        self._given_back = 0
        self._logged_at = float("-inf")

    def claimed(self, tokens: Iterable[uuid.UUID], sent: float) -> None:
        """A claim sent at ``sent`` (monotonic) leased its events under ``tokens``."""
        for token in tokens:
            self.until[token] = sent + self.lease

    def late(self, sent: float) -> bool:
        """True when a claim sent at ``sent`` came back with less than half its lease left."""
        return time.monotonic() >= sent + self.lease / 2

    def required(self, timeout: float) -> float:
        """How long a lease must surely hold for a handler with ``timeout`` to start."""
        return min(timeout, self.lease / 2)

    def until_of(self, token: uuid.UUID) -> float:
        """The monotonic time until which the lease under ``token`` surely holds."""
        return self.until.get(token, _UNKNOWN)

    def renewed(self, tokens: Iterable[uuid.UUID], sent: float) -> None:
        """A renewal sent at ``sent`` succeeded. It renewed the tokens whose lease still held
        now, as it came back (so also when it ran); a lapsed one may have been taken over, and
        a renewal does not say which rows it matched."""
        now = time.monotonic()
        until = self.until
        for token in tokens:
            if until.get(token, 0.0) > now:
                until[token] = sent + self.lease

    def keep_only(self, tokens: set[uuid.UUID]) -> None:
        """Forget the tokens of claims this process no longer holds anything of."""
        for token in [t for t in self.until if t not in tokens]:
            del self.until[token]

    def gave_back(self, events: int) -> None:
        """``events`` were not started for want of lease: one log line a second at most."""
        with self._lock:
            self._given_back += events
            now = time.monotonic()
            if now - self._logged_at < 1.0:
                return
            count, self._given_back, self._logged_at = self._given_back, 0, now
        logger.warning(
            "lease_unsure worker=%s given_back=%d: their leases might run out before their "
            "handlers' timeouts (renewals are not getting through); left to whoever takes "
            "them over",
            self.worker,
            count,
        )


async def heartbeat_loop(proc: WorkerProcess) -> None:
    """Renew the leases this process holds, every third of the lease."""
    lease_seconds = proc.config.lease_seconds
    interval = lease_seconds / 3
    clock = proc.lease_clock

    async def renew(items: list[tuple[int, uuid.UUID]], conn: psycopg.AsyncConnection[Any]) -> int:
        sent = time.monotonic()
        renewed = await worker_data.heartbeat(conn, items, lease_seconds=lease_seconds)
        clock.renewed({token for _, token in items}, sent)
        return renewed

    while True:
        await asyncio.sleep(interval)
        items = list(proc.leased.items())
        if items:
            await proc.with_db(proc.upkeep_conn, partial(renew, items))
        clock.keep_only(set(proc.leased.values()))
