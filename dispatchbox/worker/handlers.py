"""Running handlers: the sync pool, the async lanes, batch handlers, and the watchdog.

Owns the calls of the app's handlers. Claimed runs arrive from the claimer (``submit``); sync
handlers run in a pool of --concurrency threads (worker/threads.py), async ones in
--concurrency lanes on the loop (worker/lanes.py), a batch handler once per ``Batch``. Every
run ends as a result handed to the outcome book (worker/outcomes.py), on the loop: nothing here
writes to the database. The watchdog gives up on runs past their timeout (sync ones cannot be
interrupted, and one timer per async event would cost more than a no-op handler).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dispatchbox.delivery.expiry import Expiry
from dispatchbox.dispatcher import BatchHandlerSpec, EventHandlerSpec, HandlerSpec
from dispatchbox.worker import decode
from dispatchbox.worker.lanes import AsyncLanes
from dispatchbox.worker.leases import LeaseClock
from dispatchbox.worker.outcomes import (
    Batch,
    Delivered,
    HandlerTimeout,
    LeaseUnsure,
    Outcome,
    OutcomeBook,
    Result,
    Run,
)
from dispatchbox.worker.threads import SyncPool


class HandlerRunner:
    def __init__(
        self,
        *,
        concurrency: int,
        specs: dict[str, HandlerSpec],
        timeouts: dict[str, float],
        default_timeout: float,
        expiry: Expiry,
        book: OutcomeBook,
        leases: LeaseClock,
        ran_low: Callable[[], None],
    ) -> None:
        self.concurrency = concurrency
        self.specs = specs  # shared with the claimer, which adds routes' relays to both
        self.timeouts = timeouts
        self.default_timeout = default_timeout
        self.expiry = expiry
        self.book = book
        self.leases = leases  # a run starts only while its lease surely holds long enough
        self._lease_seen: tuple[object, float] = (None, 0.0)  # see check_lease
        self.ran_low = ran_low  # the queues may have run low: the claimer decides
        # Sync handlers' runs wait in the pool's queue, async ones' in the lanes'.
        self.pool: SyncPool[Run, Result] | None = None
        self.lanes: AsyncLanes[Run] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = SyncPool(
            self.concurrency,
            run_item=self._run_sync,
            timeout_of=self.timeout_of,
            on_results=self.take_pool_results,
            loop=loop,
        )
        self.lanes = AsyncLanes(
            self.concurrency,
            call=self._call_async,
            done=self._async_done,
            failed=self._async_failed,
            timeout_of=self.timeout_of,
            on_yield=self._lanes_yield,
        )

    def submit(self, sync: list[Run], lanes: list[Run]) -> None:
        assert self.pool is not None and self.lanes is not None
        if sync:
            self.pool.submit(sync)
        if lanes:
            self.lanes.submit(lanes)

    def queued(self) -> int:
        """Runs waiting to start (a batch counts as one)."""
        assert self.pool is not None and self.lanes is not None
        return self.lanes.queued() + self.pool.queued()

    def busy(self) -> int:
        assert self.pool is not None and self.lanes is not None
        return self.lanes.busy() + self.pool.busy()

    def withdraw(self, chosen: Callable[[Run], bool]) -> list[Run]:
        """Take the unstarted runs ``chosen`` picks out of the queues; the others keep their
        place."""
        assert self.pool is not None and self.lanes is not None
        taken: list[Run] = []
        for take, submit in (
            (self.pool.take_unstarted, self.pool.submit),
            (self.lanes.take_unstarted, self.lanes.submit),
        ):
            keep: list[Run] = []
            for run in take():
                (taken if chosen(run) else keep).append(run)
            if keep:
                submit(keep)
        return taken

    def timeout_of(self, item: Run) -> float:
        return self.timeouts.get(item.event_type, self.default_timeout)

    def check_lease(self, run: Run, now: float) -> None:
        """Raise LeaseUnsure unless every lease of ``run`` surely holds for its timeout (or
        half the lease): the run is then given back unstarted (worker/leases.py).

        Per event, the check is an identity test against the last token found good for any
        timeout, and a comparison: the clock's dict lookup hashes a UUID in Python, which cost
        5,700 instructions an event (python -m bench.instructions: 44,000 against 38,400)."""
        token, good_until = self._lease_seen  # one tuple: threads replace it whole
        if isinstance(run, Batch):
            items = run.items
        elif run.token is token and now < good_until:
            return
        else:
            items = [run]
        leases = self.leases
        needed = leases.required(self.timeout_of(run))
        for item in items:
            until = leases.until_of(item.token)
            if until - now <= needed:
                leases.gave_back(len(items))
                raise LeaseUnsure
        # Good for any run of this claim until half the lease is left (the most any needs).
        self._lease_seen = (items[-1].token, until - leases.lease / 2)

    # -- sync handlers (in a pool thread) -------------------------------------------------------

    def _run_sync(self, item: Run) -> Result:
        """In a pool thread: one sync handler call, every exception caught."""
        if isinstance(item, Batch):
            return self._run_batch(item)
        start = time.monotonic()
        spec = self.specs[item.event_type]
        assert isinstance(spec, EventHandlerSpec)  # a one-event run: a one-event handler
        try:
            self.check_lease(item, start)
            self.expiry.check(item)  # claimed just before its expiry, it may have waited past it
            spec.func(decode.event(item))
        except Exception as exc:
            return self.book.outcome_of(item, spec, exc, start, "")
        return (item, time.monotonic() - start)

    def _run_batch(self, batch: Batch) -> list[Outcome | Delivered]:
        """In a pool thread: one call of a sync batch handler, every exception caught."""
        start = time.monotonic()
        spec = self.specs[batch.event_type]
        assert isinstance(spec, BatchHandlerSpec)
        try:
            self.check_lease(batch, start)
            spec.func([decode.event(item) for item in batch.items])
        except Exception as exc:
            return self.book.batch_outcomes(batch, spec, exc, start)
        seconds = time.monotonic() - start
        return [(item, seconds) for item in batch.items]

    def take_pool_results(self) -> None:
        """On the loop: results from the pool threads, a burst at a time."""
        assert self.pool is not None
        self.book.record_results(self.pool.take_results())
        self.book.ready.set()
        self.ran_low()

    # -- async handlers (in a lane, on the loop) ------------------------------------------------

    def _call_async(self, run: Run) -> Awaitable[Any]:
        """In a lane: the async handler's awaitable for one event or a batch."""
        self.check_lease(run, time.monotonic())
        if isinstance(run, Batch):
            batch_spec = self.specs[run.event_type]
            assert isinstance(batch_spec, BatchHandlerSpec)
            awaitable: Awaitable[Any] = batch_spec.func([decode.event(i) for i in run.items])
            return awaitable
        spec = self.specs[run.event_type]
        assert isinstance(spec, EventHandlerSpec)
        self.expiry.check(run)  # one event; raises EventExpired
        one: Awaitable[Any] = spec.func(decode.event(run))
        return one

    def _async_done(self, run: Run, seconds: float) -> None:
        if isinstance(run, Batch):
            self.book.record_batch([(item, seconds) for item in run.items])
            return
        self.book.record_delivered(run, seconds)

    def _async_failed(self, run: Run, exc: Exception, start: float) -> None:
        spec = self.specs[run.event_type]
        if isinstance(run, Batch):
            self.book.record_batch(self.book.batch_outcomes(run, spec, exc, start))
            return
        self.book.record(self.book.outcome_of(run, spec, exc, start, ""))
        self.book.ready.set()

    def _lanes_yield(self) -> None:
        """A lane lets the loop run: write what it delivered, claim if the queues ran low."""
        self.book.ready.set()
        self.ran_low()

    # -- giving up ------------------------------------------------------------------------------

    async def watchdog_loop(self) -> None:
        """Handlers past their timeout: a failed attempt now, whatever they do later."""
        assert self.pool is not None and self.lanes is not None
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            late = [(item, now - self.timeout_of(item)) for item in self.pool.expire(now)]
            for item, start in [*late, *self.lanes.expire(now)]:
                timeout = self.timeout_of(item)
                error = HandlerTimeout(f"handler did not finish within {timeout:g}s")
                self.give_up(item, error, start, "timeout")
                self.book.ready.set()

    def give_up(self, item: Run, exc: Exception, start: float, label: str) -> None:
        """A run the worker stopped waiting for (timeout, shutdown): each event a failed
        attempt, without a traceback."""
        spec = self.specs.get(item.event_type)
        if isinstance(item, Batch):
            assert spec is not None
            self.book.record_batch(self.book.batch_outcomes(item, spec, exc, start, label))
            return
        self.book.record(self.book.outcome_of(item, spec, exc, start, label))
