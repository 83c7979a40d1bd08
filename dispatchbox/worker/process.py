"""One worker process: the part that wires the worker's units together and runs them.

Tasks of one asyncio loop, each with its own connection so that a slow statement in one never
stalls another. An event travels one way through them:

- claimer   (worker/claimer.py):   claims due events when the local queues run low and routes
                                   each to the handlers (or straight to the outcome book).
- handlers  (worker/handlers.py):  sync handlers in a pool of --concurrency threads, async ones
                                   in --concurrency lanes, batch handlers once per batch; the
                                   watchdog gives up on runs past their timeout.
- outcomes  (worker/outcomes.py):  every run ends as an outcome recorded in the book.
- flusher   (worker/flusher.py):   writes the book's outcomes a few milliseconds' worth at a time.
Beside them:
- heartbeat (worker/leases.py):    renews the lease of everything this process holds.
- listener  (worker/listener.py):  LISTENs for the insert trigger's notification (optional).
- reaper    (maintenance/reaper.py): every --reaper-interval, returns expired leases (of any
                                   worker) to pending or dead; a maintenance service this
                                   process runs by default.
- backlog:  keeps the backlog estimate publish's backpressure reads.

This module owns the shared state of those units (what this process holds a lease on, the
wake-up events, the connections), database calls retried through outages, and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.data.connection import AsyncReconnectingConnection
from dispatchbox.data.worker import Transition, worker_connection
from dispatchbox.db import redact
from dispatchbox.delivery import backpressure
from dispatchbox.delivery.board import DeliveryBoard
from dispatchbox.delivery.expiry import Expiry
from dispatchbox.delivery.ordering import OrderingPlan
from dispatchbox.dispatcher import Dispatcher
from dispatchbox.events import EventStatus
from dispatchbox.maintenance.reaper import Reaper, ReaperConfig
from dispatchbox.worker.claimer import Claimer
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.delivery import WorkerDelivery
from dispatchbox.worker.flusher import Flusher
from dispatchbox.worker.handlers import HandlerRunner
from dispatchbox.worker.hooks import WorkerHooks
from dispatchbox.worker.leases import LeaseClock, heartbeat_loop
from dispatchbox.worker.listener import listen_loop
from dispatchbox.worker.outage import CONNECTION_ERRORS, OutageTracker
from dispatchbox.worker.outcomes import OutcomeBook, events

logger = logging.getLogger("dispatchbox.worker")

T = TypeVar("T")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reaper_config(config: WorkerConfig) -> ReaperConfig:
    """The reaper's settings from the worker's command line."""
    return ReaperConfig(
        interval=config.reaper_interval,
        max_crashes=config.max_crashes,
        crash_backoff=config.crash_backoff,
    )


class WorkerProcess:
    def __init__(
        self,
        config: WorkerConfig,
        dispatcher: Dispatcher,
        *,
        hooks: WorkerHooks | None = None,
        name: str | None = None,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.hooks = hooks or WorkerHooks()
        # The handler table is fixed once the worker starts: plain dicts for the per-event path.
        self.specs = {spec.event_type: spec for spec in dispatcher.specs()}
        self.timeouts = {
            spec.event_type: spec.timeout or config.handler_timeout for spec in dispatcher.specs()
        }
        self.name = name or worker_name()
        # Delivery controls (dispatchbox/delivery): the ordered claim when a handler asked for
        # ordering, and the expiry check at claim and at handler start.
        self.ordering = OrderingPlan.of(dispatcher)
        self.expiry = Expiry(dispatcher)
        self.outage = OutageTracker(self.name)
        prepare = config.prepared_statements
        sync = config.synchronous_commit
        self.claim_conn = worker_connection(
            config.dsn, prepare=prepare, role="claim", synchronous_commit=sync
        )
        self.flush_conn = worker_connection(
            config.dsn, prepare=prepare, role="flush", synchronous_commit=sync
        )
        self.upkeep_conn = worker_connection(config.dsn, prepare=prepare, role="upkeep")
        self.listen_conn = worker_connection(config.dsn, prepare=False, role="listen")
        # Breakers and rate limits (dispatchbox.delivery): only when the app configured a
        # destination, so that an app without any pays nothing for them.
        self.delivery: WorkerDelivery | None = None
        self.delivery_conn = worker_connection(config.dsn, prepare=prepare, role="delivery")
        if dispatcher.destinations():
            board = DeliveryBoard(
                dispatcher, worker=self.name, probe_lease=config.handler_timeout + 5.0
            )
            self.delivery = WorkerDelivery(self, board)
            # Handlers of destinations with a breaker do not start while it stops them.
            self.specs = {t: board.guard(spec) for t, spec in self.specs.items()}

        # Events of the batches not yet settled, beyond one per batch: the queues count a batch
        # as one entry. Changed on the loop only.
        self.batch_extra = 0
        self.want_more = asyncio.Event()  # set when the local queues ran low
        self.wakeup = asyncio.Event()  # a NOTIFY arrived
        self.stopping = asyncio.Event()
        # Everything this process holds a lease on: id -> token; and until when those surely hold.
        self.leased: dict[int, uuid.UUID] = {}
        self.lease_clock = LeaseClock(config.lease_seconds, self.name)
        self.low_water = max(1, config.batch_size // 2)
        self.crashed: BaseException | None = None
        # The default hooks do nothing: skip the per-event call rather than make it.
        handled = None if type(self.hooks).handled is WorkerHooks.handled else self.hooks.handled
        # The units, in the order an event meets them.
        self.claimer = Claimer(self)
        self.book = OutcomeBook(
            worker=self.name,
            backoff=config.backoff(),
            handled=handled,
            batch_settled=self._batch_settled,
        )
        self.handlers = HandlerRunner(
            concurrency=config.concurrency,
            specs=self.specs,
            timeouts=self.timeouts,
            default_timeout=config.handler_timeout,
            expiry=self.expiry,
            book=self.book,
            leases=self.lease_clock,
            ran_low=self._maybe_want_more,
        )
        self.flusher = Flusher(self)
        self.reaper = Reaper(
            reaper_config(config),
            lambda op: self.with_db(self.upkeep_conn, op),
            reaped=self._reaped,
            park_behind=None if self.ordering is None else self.ordering.park_behind,
        )

    # -- entry -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            logger.info("worker_stopping worker=%s", self.name)
            self.stopping.set()
            if self.handlers.lanes is not None:
                self.handlers.lanes.stop()
            self.want_more.set()
            self.wakeup.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self.handlers.start(loop)
        pool, lanes = self.handlers.pool, self.handlers.lanes
        assert pool is not None and lanes is not None
        for lane in lanes.tasks:
            lane.add_done_callback(self._task_ended)
        logger.info(
            "worker_started worker=%s handlers=%d concurrency=%d batch_size=%d",
            self.name,
            len(self.dispatcher.event_types),
            self.config.concurrency,
            self.config.batch_size,
        )
        self.want_more.set()
        background = [
            asyncio.create_task(heartbeat_loop(self), name="heartbeat"),
            asyncio.create_task(self.handlers.watchdog_loop(), name="watchdog"),
        ]
        if self.reaper.config.interval > 0:
            background.append(asyncio.create_task(self.reaper.run(), name="reaper"))
        if self.config.listen:
            background.append(asyncio.create_task(listen_loop(self), name="listener"))
        if self.delivery is not None:
            # The breakers' rows exist before the first outcome is counted against them.
            await self.with_db(self.delivery_conn, self.delivery.board.ensure)
            background.append(asyncio.create_task(self.delivery.loop(), name="delivery"))
        background.append(asyncio.create_task(self._backlog_loop(), name="backlog"))
        claimer = asyncio.create_task(self.claimer.loop(), name="claimer")
        flusher = asyncio.create_task(self.flusher.loop(), name="flusher")
        for task in (claimer, flusher, *background):
            task.add_done_callback(self._task_ended)
        try:
            await self.stopping.wait()
            await claimer
            await self._shutdown()
        finally:
            self.book.ready.set()
            flusher.cancel()
            for task in background:
                task.cancel()
            await asyncio.gather(flusher, *background, return_exceptions=True)
            if self.delivery is not None:
                await self.delivery.close()
            for conn in (
                self.claim_conn,
                self.flush_conn,
                self.upkeep_conn,
                self.listen_conn,
                self.delivery_conn,
            ):
                await conn.close()
            pool.stop()
            await lanes.close()
            logger.info("worker_stopped worker=%s", self.name)
        if self.crashed is not None:
            raise self.crashed

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        # A loop that dies of anything but an outage is a bug or a broken schema: stop this
        # process (the supervisor restarts it) rather than limp on without it.
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        logger.error(
            "worker_task_failed worker=%s task=%s error=%s: %s",
            self.name,
            task.get_name(),
            type(exc).__name__,
            redact(" ".join(str(exc).split()))[:500],
        )
        self.crashed = exc
        self.request_stop()

    # -- shared by the units ---------------------------------------------------------------------

    async def with_db(
        self,
        conn: AsyncReconnectingConnection,
        op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        until_stopped: bool = True,
    ) -> T | None:
        """Run op, retrying through outages; None when stopping interrupts the retries."""
        while True:
            try:
                result = await op(await conn.get())
            except CONNECTION_ERRORS as exc:
                self.outage.failed(exc)
                await conn.close()
                if until_stopped and self.stopping.is_set():
                    return None
                await self.outage.backoff()
                continue
            self.outage.ok()
            return result

    def queued(self) -> int:
        """Events waiting to start in this process (what the claimer keeps above low water)."""
        return self.handlers.queued() + self.batch_extra

    def _maybe_want_more(self) -> None:
        if self.queued() < self.low_water:
            self.want_more.set()

    def _batch_settled(self, events: int) -> None:
        """A batch's events are settled: the queues counted them until now, and the claimer
        may be waiting on them."""
        self.batch_extra -= events - 1
        self._maybe_want_more()

    def _reaped(self, transition: Transition) -> None:
        """The reaper took an event back: the hooks hear of it (and of a poison one's death)."""
        self.hooks.lease_expired(transition)
        if transition.status == EventStatus.DEAD:
            self.hooks.dead(transition, "Poison")

    async def _backlog_loop(self) -> None:
        """Keep the backlog estimate that publish's backpressure reads (one process at a time
        does the count; the others find it fresh and skip)."""
        while True:
            await asyncio.sleep(backpressure.REFRESH_SECONDS)
            await self.with_db(self.upkeep_conn, backpressure.refresh)

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        pool, lanes = self.handlers.pool, self.handlers.lanes
        assert pool is not None and lanes is not None
        unstarted = [
            (item.id, item.token)
            for run in [*pool.take_unstarted(), *lanes.take_unstarted()]
            for item in events(run)
        ]
        if unstarted:
            released = await self.with_db(
                self.flush_conn, lambda c: worker_data.release(c, unstarted), until_stopped=False
            )
            for event_id, _ in unstarted:
                self.leased.pop(event_id, None)
            logger.info("released_unstarted worker=%s count=%s", self.name, released)
        running = lanes.busy() + pool.busy()
        if running:
            logger.info(
                "waiting_for_handlers worker=%s count=%d grace_seconds=%g",
                self.name,
                running,
                self.config.grace_period,
            )
            deadline = time.monotonic() + self.config.grace_period
            while (lanes.busy() or pool.busy()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # A graceful stop costs the events nothing: handlers still running at the end of
            # the grace period are given back like unstarted ones (no attempt counted).
            cut = [
                (item.id, item.token)
                for run in [*pool.abandon_all(), *(r for r, _ in lanes.abandon_all())]
                for item in events(run)
            ]
            if cut:
                released = await self.with_db(
                    self.flush_conn, lambda c: worker_data.release(c, cut), until_stopped=False
                )
                for event_id, _ in cut:
                    self.leased.pop(event_id, None)
                logger.info("released_running worker=%s count=%s", self.name, released)
        self.handlers.take_pool_results()
        try:
            await asyncio.wait_for(self.flusher.flush(), timeout=15)
        except TimeoutError:
            logger.error(
                "final_flush_timeout worker=%s: outcomes not written; their leases will expire "
                "and the events will be delivered again",
                self.name,
            )


def run_process(config: WorkerConfig, dispatcher: Dispatcher, hooks: WorkerHooks | None) -> None:
    tune_gc()
    asyncio.run(WorkerProcess(config, dispatcher, hooks=hooks).run())


GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """A draining worker allocates a few container objects per event (rows, events, outcomes)
    and frees nearly all of them by reference counting; the default first-generation threshold
    (700 allocations) ran the cycle collector every few dozen events, ~10% of the process's CPU.
    Collect every 10,000 instead, and move what start-up built (modules, the app) out of the
    collector's sight. Garbage in reference cycles is still collected, a little later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
