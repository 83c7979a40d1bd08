"""Keeping leases: the heartbeat that renews the lease of every event this process holds, and
the lease clock that stops this process starting an event whose lease it can no longer vouch
for.

Every third of the lease, one statement (through the data layer, on the process's upkeep
connection, retried through outages) renews them all. Expired leases of any worker are the
reaper's (dispatchbox/maintenance/reaper.py), which the process runs beside the heartbeat.

The lease clock is why a host cut off from the database does not run events that another host
has taken over meanwhile. A lease runs from the database's ``now()`` when the claim or renewal
ran, which is never before this process sent it: so "sent + lease" on the local monotonic clock
is a time before which the lease surely holds. An event may start only while that time is more
than a third of the lease away (one missed renewal); claims whose reply came later than that
(a network partition held it back) and queued events whose leases go unrenewed are given back
instead of run. Their release is guarded by the lease token, so it changes nothing when the
reaper was first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.worker.outcomes import Run, events

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess

logger = logging.getLogger("dispatchbox.worker")

CHECK_INTERVAL = 0.1  # seconds between looks for leases about to lapse


class LeaseClock:
    """For each claim's lease token, the monotonic time until which its lease surely holds."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease = lease_seconds
        self.margin = lease_seconds / 3  # one renewal interval: start nothing closer than this
        self.until: dict[uuid.UUID, float] = {}

    def claimed(self, tokens: Iterable[uuid.UUID], sent: float) -> None:
        """A claim sent at ``sent`` (monotonic) leased its events under ``tokens``."""
        for token in tokens:
            self.until[token] = sent + self.lease

    def late(self, sent: float) -> bool:
        """True when a claim sent at ``sent`` came back too late to start its events."""
        return time.monotonic() >= sent + self.lease - self.margin

    def renewed(self, tokens: Iterable[uuid.UUID], sent: float) -> None:
        """A renewal sent at ``sent`` succeeded. It renewed the tokens whose lease still held
        now, as it came back (so also when it ran); a lapsed one may have been taken over, and
        a renewal does not say which rows it matched."""
        now = time.monotonic()
        until = self.until
        for token in tokens:
            if until.get(token, 0.0) > now:
                until[token] = sent + self.lease

    def lapsing(self) -> set[uuid.UUID]:
        """Tokens whose lease may run out within the margin: forgotten here (never renewed
        again) and returned, so that their unstarted events are given back."""
        limit = time.monotonic() + self.margin
        lapsing = {token for token, until in self.until.items() if until <= limit}
        for token in lapsing:
            del self.until[token]
        return lapsing

    def keep_only(self, tokens: set[uuid.UUID]) -> None:
        """Forget the tokens of claims this process no longer holds anything of."""
        for token in [t for t in self.until if t not in tokens]:
            del self.until[token]


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


async def lapse_loop(proc: WorkerProcess) -> None:
    """Give back unstarted events whose lease may lapse before they could run (the heartbeat
    cannot reach the database): another process may take them over once it runs out."""
    clock = proc.lease_clock
    while True:
        await asyncio.sleep(CHECK_INTERVAL)
        lapsing = clock.lapsing()
        if not lapsing:
            continue
        runs = proc.handlers.withdraw(partial(_holds_any, lapsing))
        if runs:
            give_back(proc, runs)
            logger.warning(
                "lease_unsure worker=%s given_back=%d: leases not renewed in time; their "
                "unstarted events are left to whoever takes them over",
                proc.name,
                sum(len(events(run)) for run in runs),
            )


def _holds_any(tokens: set[uuid.UUID], run: Run) -> bool:
    return any(item.token in tokens for item in events(run))


def give_back(proc: WorkerProcess, runs: list[Run]) -> None:
    """Unstarted runs back to pending through the next flush, the attempt not spent."""
    book = proc.book
    for run in runs:
        items = events(run)
        proc.batch_extra -= len(items) - 1
        book.released.extend(items)
    book.ready.set()
    proc.want_more.set()
