"""The reaper: a maintenance service that takes back events whose lease expired.

A worker process that dies or hangs stops renewing the leases of the events it holds; every
``interval`` the reaper returns those events (of any worker) to pending, a crash attempt each,
or to dead as poison after ``max_crashes`` (the reaper_expire statement). Each worker process
runs one by default, beside its other tasks, so a deployment needs nothing else to recover
from a crash.

It runs statements through the data layer only, on a connection it is handed (``db``: the
caller's retry-through-outages runner), and reports each event it moved to the ``reaped`` hook
it is given. Nothing here imports the worker: the worker assembles a reaper and runs it.

Test signal (as River's rescuer has): ``sweeps`` counts finished sweeps and ``swept`` is set
after each; ``wait_sweeps(n)`` returns once ``n`` sweeps have finished, so tests wait on the
reaper rather than sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.data.worker import Transition
from dispatchbox.events import EventStatus

logger = logging.getLogger("dispatchbox.worker")

T = TypeVar("T")
AsyncConn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class ReaperConfig:
    # Seconds between sweeps (<= 0: this process runs no reaper).
    interval: float = 5.0
    # Events moved per statement; a full batch sweeps again at once, until one is not full.
    batch_size: int = 1000
    # Crashes (an expired lease) after which an event is poison and goes dead; 0: never.
    max_crashes: int = 3
    # Seconds before an event lost to a crash is due again, doubling per crash, with jitter.
    crash_backoff: float = 1.0


class RunDb(Protocol):
    """Runs one database operation on the caller's connection, retrying through outages;
    None when the caller is stopping."""

    def __call__(self, op: Callable[[AsyncConn], Awaitable[T]]) -> Awaitable[T | None]: ...


# Called once per event the reaper moved (pending or dead), after the move.
Reaped = Callable[[Transition], None]
# Parks the events behind these dead ones (delivery.ordering), when ordering is in use.
ParkBehind = Callable[[AsyncConn, list[int]], Awaitable[Any]]


def no_reaped(transition: Transition) -> None:
    """The default hook: nothing to tell."""


class Reaper:
    def __init__(
        self,
        config: ReaperConfig,
        db: RunDb,
        *,
        reaped: Reaped = no_reaped,
        park_behind: ParkBehind | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.reaped = reaped
        self.park_behind = park_behind
        self.sweeps = 0  # test signal: sweeps finished
        self.swept = asyncio.Event()  # test signal: set after each sweep

    async def run(self) -> None:
        """Sweep every ``interval`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.interval)
            await self.sweep()

    async def sweep(self) -> list[Transition]:
        """One sweep: every expired lease, in statements of ``batch_size``; what moved."""
        cfg = self.config
        reap = partial(
            worker_data.reap,
            limit=cfg.batch_size,
            max_crashes=cfg.max_crashes,
            crash_backoff=cfg.crash_backoff,
        )
        everything: list[Transition] = []
        while True:
            moved = await self.db(reap)
            if moved:
                everything += moved
                await self._moved(moved)
            if not moved or len(moved) < cfg.batch_size:
                break
        self.sweeps += 1
        self.swept.set()
        return everything

    async def wait_sweeps(self, count: int) -> None:
        """Test signal: return once ``count`` sweeps in all have finished."""
        while self.sweeps < count:
            self.swept.clear()
            await self.swept.wait()

    async def _moved(self, moved: list[Transition]) -> None:
        dead_ids = [t.id for t in moved if t.status == EventStatus.DEAD]
        park = self.park_behind
        if dead_ids and park is not None:
            await self.db(lambda conn: park(conn, dead_ids))
        for t in moved:
            logger.warning(
                "lease_expired id=%d event_type=%s held_by=%s attempts=%d now=%s",
                t.id,
                t.event_type,
                t.locked_by,
                t.attempts,
                t.status,
            )
            if t.status == EventStatus.DEAD:
                logger.warning(
                    "event_dead id=%d event_type=%s aggregate_type=%s attempts=%d "
                    "error_type=Poison",
                    t.id,
                    t.event_type,
                    t.aggregate_type,
                    t.attempts,
                )
            self.reaped(t)
