"""One worker process: claim batches, run handlers, write outcomes in batches, renew leases,
reap expired leases, wake on NOTIFY, shut down cleanly.

Tasks of one asyncio loop, each with its own connection so that a slow statement in one never
stalls another:

- claimer:   claims up to --batch-size due events whenever the local queue runs low; when there
             is nothing due it sleeps until a NOTIFY or the poll interval.
- dispatch:  starts a handler for each queued event, at most --concurrency at a time (sync
             handlers in a thread pool of that size, async ones on this loop).
- flusher:   writes completions and failures a few milliseconds' worth at a time, one statement
             per kind, guarded by the lease token.
- heartbeat: renews the lease of everything this process holds, every third of the lease.
- reaper:    every --reaper-interval, returns expired leases (of any worker) to pending or dead.
- listener:  LISTENs for the insert trigger's notification (optional, off behind PgBouncer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import psycopg

from dispatchbox import queries
from dispatchbox.db import connect_async, redact
from dispatchbox.dispatcher import Dispatcher, HandlerSpec
from dispatchbox.errors import PermanentError
from dispatchbox.events import OutboxEvent
from dispatchbox.worker import store
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.hooks import WorkerHooks
from dispatchbox.worker.outage import CONNECTION_ERRORS, OutageTracker

logger = logging.getLogger("dispatchbox.worker")

MAX_MESSAGE = 2000  # characters of an error message kept
MAX_TRACEBACK = 8000  # characters of a traceback kept (its end, where the error is)

T = TypeVar("T")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Connection:
    """A connection that reopens itself after an outage."""

    def __init__(self, dsn: str, *, prepare: bool, role: str) -> None:
        self.dsn = dsn
        self.prepare = prepare
        self.role = role
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            await self.close()
            conn = await connect_async(
                self.dsn,
                autocommit=True,
                application_name=f"dispatchbox-worker-{self.role}",
            )
            if not self.prepare:
                conn.prepare_threshold = None
            self.conn = conn
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


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
        self.name = name or worker_name()
        self.backoff = config.backoff()
        self.outage = OutageTracker(self.name)
        prepare = config.prepared_statements
        self.claim_conn = Connection(config.dsn, prepare=prepare, role="claim")
        self.flush_conn = Connection(config.dsn, prepare=prepare, role="flush")
        self.upkeep_conn = Connection(config.dsn, prepare=prepare, role="upkeep")
        self.listen_conn = Connection(config.dsn, prepare=False, role="listen")

        self.queue: deque[store.Claimed] = deque()
        # Set when the dispatch loop may have something to do: events queued, a handler
        # finished, or stopping.
        self.progress = asyncio.Event()
        self.want_more = asyncio.Event()  # set when the queue ran low
        self.wakeup = asyncio.Event()  # a NOTIFY arrived
        self.stopping = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()
        # Everything this process holds a lease on: id -> token.
        self.leased: dict[int, uuid.UUID] = {}
        self.completed: list[tuple[int, uuid.UUID]] = []
        self.failed: list[tuple[store.Failure, str]] = []  # (failure, event_type)
        self.results_ready = asyncio.Event()
        self.executor = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="dispatchbox-handler"
        )
        self.low_water = max(1, config.batch_size // 2)
        self.crashed: BaseException | None = None

    # -- entry -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            logger.info("worker_stopping worker=%s", self.name)
            self.stopping.set()
            self.progress.set()
            self.want_more.set()
            self.wakeup.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        logger.info(
            "worker_started worker=%s handlers=%d concurrency=%d batch_size=%d",
            self.name,
            len(self.dispatcher.event_types),
            self.config.concurrency,
            self.config.batch_size,
        )
        self.want_more.set()
        background = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat")]
        if self.config.reaper_interval > 0:
            background.append(asyncio.create_task(self._reaper_loop(), name="reaper"))
        if self.config.listen:
            background.append(asyncio.create_task(self._listen_loop(), name="listener"))
        claimer = asyncio.create_task(self._claim_loop(), name="claimer")
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        for task in (claimer, flusher, *background):
            task.add_done_callback(self._task_ended)
        try:
            await self._dispatch_loop()
            await claimer
            await self._shutdown()
        finally:
            self.results_ready.set()
            flusher.cancel()
            for task in background:
                task.cancel()
            await asyncio.gather(flusher, *background, return_exceptions=True)
            for conn in (self.claim_conn, self.flush_conn, self.upkeep_conn, self.listen_conn):
                await conn.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
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

    # -- database calls with outage handling ---------------------------------------------------

    async def _with_db(
        self,
        conn: Connection,
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

    # -- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        cfg = self.config
        while not self.stopping.is_set():
            await self.want_more.wait()
            if self.stopping.is_set():
                break
            room = cfg.batch_size - len(self.queue)
            if room <= 0:
                self.want_more.clear()
                continue
            # Cleared before the claim, so a notification that arrives during it is not lost.
            self.wakeup.clear()
            batch = await self._with_db(self.claim_conn, partial(self._claim, room))
            if batch:
                for item in batch:
                    self.leased[item.id] = item.token
                self.queue.extend(batch)
                self.progress.set()
            if batch is not None and len(batch) < room:
                # Nothing more is due: sleep until a notification or the poll interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), cfg.poll_interval)
            elif len(self.queue) >= self.low_water:
                self.want_more.clear()

    async def _claim(self, limit: int, conn: psycopg.AsyncConnection[Any]) -> list[store.Claimed]:
        return await store.claim(
            conn, worker=self.name, limit=limit, lease_seconds=self.config.lease_seconds
        )

    # -- running handlers -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        limit = self.config.concurrency
        while not self.stopping.is_set():
            if not self.queue or len(self.inflight) >= limit:
                self.progress.clear()
                await self.progress.wait()
                continue
            item = self.queue.popleft()
            if len(self.queue) < self.low_water:
                self.want_more.set()
            task = asyncio.create_task(self._handle(item))
            self.inflight.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.progress.set()

    def _event(self, item: store.Claimed) -> OutboxEvent:
        return OutboxEvent(
            id=item.id,
            aggregate_type=item.aggregate_type,
            aggregate_id=item.aggregate_id,
            event_type=item.event_type,
            payload=json.loads(item.payload),
            headers=json.loads(item.headers),
            attempts=item.attempts,
            created_at=item.created_at,
        )

    @staticmethod
    def _db_time(item: store.Claimed, mono: float) -> datetime:
        # Timestamps follow the database clock: claim time plus locally measured elapsed time.
        return item.claimed_at + timedelta(seconds=mono - item.claimed_mono)

    async def _handle(self, item: store.Claimed) -> None:
        mono_start = time.monotonic()
        spec = self.dispatcher.get(item.event_type)
        outcome = "done"
        try:
            if spec is None:
                raise LookupError(f"no handler registered for event type {item.event_type!r}")
            await self._call(spec, self._event(item))
        except PermanentError as exc:
            outcome = "permanent"
            self._record_failure(item, spec, exc, mono_start, permanent=True)
        except TimeoutError:
            outcome = "timeout"
            timeout = (spec.timeout if spec else None) or self.config.handler_timeout
            late = HandlerTimeout(f"handler did not finish within {timeout:g}s")
            self._record_failure(item, spec, late, mono_start, with_traceback=False)
        except asyncio.CancelledError:
            outcome = "failed"
            cut = ShutdownTimeout("worker shut down before the handler finished (grace period)")
            self._record_failure(item, spec, cut, mono_start, with_traceback=False)
        except Exception as exc:
            outcome = "failed"
            self._record_failure(item, spec, exc, mono_start)
        else:
            self.completed.append((item.id, item.token))
        finally:
            self.results_ready.set()
            self.hooks.handled(item.event_type, outcome, time.monotonic() - mono_start)

    async def _call(self, spec: HandlerSpec, event: OutboxEvent) -> None:
        timeout = spec.timeout or self.config.handler_timeout
        if spec.is_async:
            await asyncio.wait_for(spec.func(event), timeout)
        else:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(self.executor, spec.func, event), timeout)

    def _record_failure(
        self,
        item: store.Claimed,
        spec: HandlerSpec | None,
        exc: BaseException,
        mono_start: float,
        *,
        permanent: bool = False,
        with_traceback: bool = True,
    ) -> None:
        policy = (spec.backoff if spec else None) or self.backoff
        tb = None
        if with_traceback:
            tb = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
        failure = store.Failure(
            id=item.id,
            token=item.token,
            error_type=type(exc).__name__,
            message=(str(exc) or type(exc).__name__)[:MAX_MESSAGE],
            traceback=tb,
            started_at=self._db_time(item, mono_start),
            finished_at=self._db_time(item, time.monotonic()),
            permanent=permanent,
            delay=policy.delay(item.attempts),
        )
        self.failed.append((failure, item.event_type))

    # -- writing outcomes -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self.results_ready.wait()
            self.results_ready.clear()
            if self.config.flush_interval and not self.stopping.is_set():
                await asyncio.sleep(self.config.flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        done, self.completed = self.completed, []
        failed, self.failed = self.failed, []
        if not done and not failed:
            return
        dead: list[store.Transition] = []

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            nonlocal dead
            if done:
                await store.complete(conn, done)
            if failed:
                dead = await store.fail(conn, worker=self.name, failures=[f for f, _ in failed])

        # Outcomes are retried through an outage until written; a lease that expires meanwhile
        # makes the write a no-op (the token no longer matches) and the event is redelivered.
        await self._with_db(self.flush_conn, write, until_stopped=False)
        for event_id, _ in done:
            self.leased.pop(event_id, None)
        error_types = {f.id: f.error_type for f, _ in failed}
        for f, _ in failed:
            self.leased.pop(f.id, None)
        for t in dead:
            logger.warning(
                "event_dead id=%d event_type=%s aggregate_type=%s attempts=%d error_type=%s",
                t.id,
                t.event_type,
                t.aggregate_type,
                t.attempts,
                error_types.get(t.id, "?"),
            )
            self.hooks.dead(t, error_types.get(t.id, "?"))

    # -- leases -------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            items = list(self.leased.items())
            if items:
                await self._with_db(self.upkeep_conn, partial(self._renew, items))

    async def _renew(
        self, items: list[tuple[int, uuid.UUID]], conn: psycopg.AsyncConnection[Any]
    ) -> int:
        return await store.heartbeat(conn, items, lease_seconds=self.config.lease_seconds)

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval)
            while True:
                moved = await self._with_db(self.upkeep_conn, store.reap)
                for t in moved or []:
                    logger.warning(
                        "lease_expired id=%d event_type=%s held_by=%s attempts=%d now=%s",
                        t.id,
                        t.event_type,
                        t.locked_by,
                        t.attempts,
                        t.status,
                    )
                    self.hooks.lease_expired(t)
                    if t.status == "dead":
                        logger.warning(
                            "event_dead id=%d event_type=%s aggregate_type=%s attempts=%d "
                            "error_type=LeaseExpired",
                            t.id,
                            t.event_type,
                            t.aggregate_type,
                            t.attempts,
                        )
                        self.hooks.dead(t, "LeaseExpired")
                if not moved or len(moved) < 1000:
                    break

    # -- wake-up --------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                conn = await self.listen_conn.get()
                await queries.aexecute(conn, "worker_listen")
                # A notification may have been missed while (re)connecting: look once.
                self.wakeup.set()
                async for _ in conn.notifies():
                    self.wakeup.set()
                    self.want_more.set()
            except CONNECTION_ERRORS as exc:
                self.outage.failed(exc)
                await self.listen_conn.close()
                await self.outage.backoff()

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        unstarted = [(item.id, item.token) for item in self.queue]
        self.queue.clear()
        if unstarted:
            released = await self._with_db(
                self.flush_conn, lambda c: store.release(c, unstarted), until_stopped=False
            )
            for event_id, _ in unstarted:
                self.leased.pop(event_id, None)
            logger.info("released_unstarted worker=%s count=%s", self.name, released)
        if self.inflight:
            logger.info(
                "waiting_for_handlers worker=%s count=%d grace_seconds=%g",
                self.name,
                len(self.inflight),
                self.config.grace_period,
            )
            _, still = await asyncio.wait(set(self.inflight), timeout=self.config.grace_period)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        try:
            await asyncio.wait_for(self._flush(), timeout=15)
        except TimeoutError:
            logger.error(
                "final_flush_timeout worker=%s: outcomes not written; their leases will expire "
                "and the events will be delivered again",
                self.name,
            )


class HandlerTimeout(Exception):
    """The handler ran past its timeout."""


class ShutdownTimeout(Exception):
    """The worker stopped before the handler finished within the grace period."""


def run_process(config: WorkerConfig, dispatcher: Dispatcher, hooks: WorkerHooks | None) -> None:
    asyncio.run(WorkerProcess(config, dispatcher, hooks=hooks).run())
