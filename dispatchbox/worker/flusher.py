"""Flushing outcomes: writing what the outcome book recorded, a few milliseconds' worth at a time.

Owns the write of outcomes to the database through the data layer: one statement per kind
(complete, fail, release), guarded by the lease token; the breakers' count of the same flush;
parking an ordered aggregate behind an event that went dead; and what follows a write (the
leases no longer renewed, the ``dead`` hook, the claimer woken when a finished event may free
the next one). It is the end of an event's path through the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.db import redact

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess

logger = logging.getLogger("dispatchbox.worker")


class Flusher:
    def __init__(self, proc: WorkerProcess) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    async def loop(self) -> None:
        proc = self.proc
        ready = proc.book.ready
        interval = proc.config.flush_interval
        while True:
            await ready.wait()
            ready.clear()
            if interval and not proc.stopping.is_set():
                await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        # One flush at a time: the shutdown's final flush must not find the lists already taken
        # by the flush loop, return, and let that loop be cancelled in the middle of its write.
        async with self.lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        proc = self.proc
        done, failed, released = proc.book.take()
        if not done and not failed and not released:
            return
        dead: list[worker_data.Transition] = []

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            nonlocal dead
            if done:
                await worker_data.complete(conn, done)
            if failed:
                dead = await worker_data.fail(
                    conn, worker=proc.name, failures=[f for f, _ in failed]
                )
                if dead and proc.ordering is not None:
                    await proc.ordering.park_behind(conn, [t.id for t in dead])
            if proc.delivery is not None:  # breakers count this flush with one statement
                await proc.delivery.record(conn, done, failed)
            if released:
                await worker_data.release(conn, [(item.id, item.token) for item in released])

        leased = proc.leased
        # Outcomes are retried through an outage until written; a lease that expires meanwhile
        # makes the write a no-op (the token no longer matches) and the event is redelivered.
        try:
            await proc.with_db(proc.flush_conn, write, until_stopped=False)
        except (psycopg.Error, ValueError) as exc:
            # Not an outage: this batch cannot be written as it is (ValueError: a value psycopg
            # could not encode). Drop it rather than stop the process; its leases expire and
            # the reaper records the attempts.
            logger.error(
                "flush_failed worker=%s done=%d failed=%d error=%s: %s",
                proc.name,
                len(done),
                len(failed),
                type(exc).__name__,
                redact(" ".join(str(exc).split()))[:300],
            )
            for item in [*done, *released]:
                leased.pop(item.id, None)  # stop renewing: let the leases run out
            for f, _ in failed:
                leased.pop(f.id, None)
            return
        for item in [*done, *released]:
            leased.pop(item.id, None)
        if proc.ordering is not None:
            # A finished event may be what held its aggregate's next one: claim again now
            # rather than at the next poll.
            proc.wakeup.set()
            proc.want_more.set()
        error_types = {f.id: f.error_type for f, _ in failed}
        for f, _ in failed:
            leased.pop(f.id, None)
        if proc.claimer.suspect_settled():
            # The suspect is settled: claim the next one now rather than at the next poll.
            proc.wakeup.set()
            proc.want_more.set()
        for t in dead:
            logger.warning(
                "event_dead id=%d event_type=%s aggregate_type=%s attempts=%d error_type=%s",
                t.id,
                t.event_type,
                t.aggregate_type,
                t.attempts,
                error_types.get(t.id, "?"),
            )
            proc.hooks.dead(t, error_types.get(t.id, "?"))
