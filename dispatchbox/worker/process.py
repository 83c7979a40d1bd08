"""One worker process: claim batches, run handlers, write outcomes in batches, renew leases,
reap expired leases, wake on NOTIFY, shut down cleanly.

Tasks of one asyncio loop, each with its own connection so that a slow statement in one never
stalls another:

- claimer:   claims up to --batch-size due events whenever fewer than half a batch wait in the
             local queue; when there is nothing due it sleeps until a NOTIFY or the poll interval.
- handlers:  sync handlers run in a pool of --concurrency threads that pull claimed events
             from a shared queue and hand results back in bursts (worker/threads.py); async
             handlers run in --concurrency lanes, long-lived tasks on this loop that await one
             handler after another (worker/lanes.py).
- watchdog:  fails handlers that run past their timeout: sync ones cannot be interrupted, and
             one timer per async event would cost more than a no-op handler.
- flusher:   writes completions and failures a few milliseconds' worth at a time, one statement
             per kind, guarded by the lease token.
- heartbeat: renews the lease of everything this process holds, every third of the lease.
- reaper:    every --reaper-interval, returns expired leases (of any worker) to pending or dead.
- listener:  LISTENs for the insert trigger's notification (optional, off behind PgBouncer).
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from traceback import format_exception
from typing import Any, TypeVar

import psycopg

from dispatchbox.data import queries
from dispatchbox.db import connect_async, redact
from dispatchbox.delivery import backpressure
from dispatchbox.delivery.board import DeliveryBoard, DestinationPaused
from dispatchbox.delivery.expiry import Expiry
from dispatchbox.delivery.ordering import OrderingPlan
from dispatchbox.dispatcher import BatchHandlerSpec, Dispatcher, EventHandlerSpec, HandlerSpec
from dispatchbox.errors import BatchFailure, EventExpired, PermanentError, RetryLater
from dispatchbox.worker import decode, store
from dispatchbox.worker.claim_position import ClaimPositions
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.delivery import WorkerDelivery
from dispatchbox.worker.hooks import WorkerHooks
from dispatchbox.worker.lanes import AsyncLanes
from dispatchbox.worker.outage import CONNECTION_ERRORS, OutageTracker
from dispatchbox.worker.threads import SyncPool

logger = logging.getLogger("dispatchbox.worker")

MAX_MESSAGE = 2000  # characters of an error message kept
MAX_TRACEBACK = 8000  # characters of a traceback kept (its end, where the error is)

T = TypeVar("T")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Connection:
    """A connection that reopens itself after an outage."""

    def __init__(
        self, dsn: str, *, prepare: bool, role: str, synchronous_commit: bool = True
    ) -> None:
        self.dsn = dsn
        self.prepare = prepare
        self.role = role
        self.synchronous_commit = synchronous_commit
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            await self.close()
            extra: dict[str, str] = {}
            if not self.synchronous_commit:
                # Only this session's commits: the worker's own state changes. A completion
                # lost in a crash means the event is delivered again, which at-least-once allows.
                extra["options"] = "-c synchronous_commit=off"
            conn = await connect_async(
                self.dsn,
                autocommit=True,
                application_name=f"dispatchbox-worker-{self.role}",
                **extra,
            )
            if not self.prepare:
                conn.prepare_threshold = None
            # Timestamps arrive in UTC whatever the server's TimeZone: psycopg converts a
            # timestamptz to UTC several times faster than to a named zone (0.2 against 0.6 us
            # a value, two per claimed event). A SET rather than a startup option, which
            # PgBouncer refuses; PgBouncer keeps TimeZone per client.
            await queries.aexecute(conn, "worker_session_utc")
            self.conn = conn
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


@dataclass(slots=True)
class Outcome:
    """How one handler call ended."""

    item: store.Claimed
    label: str  # done | failed | timeout | permanent
    seconds: float
    failure: store.Failure | None = None


# A sync handler that returned: (event, seconds). A tuple rather than an Outcome: one is made
# per delivered event, and a tuple costs a sixth of a dataclass instance.
Delivered = tuple[store.Claimed, float]


@dataclass(slots=True)
class Batch:
    """Events of one type from one claim, for one call of their batch handler."""

    event_type: str
    items: list[store.Claimed]


# What a handler thread or task runs, and what a thread hands back (a batch: one per event).
Run = store.Claimed | Batch
Result = Outcome | Delivered | list[Outcome | Delivered]


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
        # The default hooks do nothing: skip the per-event call rather than make it.
        self._handled = (
            None if type(self.hooks).handled is WorkerHooks.handled else self.hooks.handled
        )
        self.name = name or worker_name()
        self.backoff = config.backoff()
        # Delivery controls (dispatchbox/delivery): the ordered claim when a handler asked for
        # ordering, and the expiry check at claim and at handler start.
        self.ordering = OrderingPlan.of(dispatcher)
        self.expiry = Expiry(dispatcher)
        self.outage = OutageTracker(self.name)
        prepare = config.prepared_statements
        sync = config.synchronous_commit
        self.claim_conn = Connection(
            config.dsn, prepare=prepare, role="claim", synchronous_commit=sync
        )
        self.flush_conn = Connection(
            config.dsn, prepare=prepare, role="flush", synchronous_commit=sync
        )
        self.upkeep_conn = Connection(config.dsn, prepare=prepare, role="upkeep")
        self.listen_conn = Connection(config.dsn, prepare=False, role="listen")
        # Breakers and rate limits (dispatchbox.delivery): only when the app configured a
        # destination, so that an app without any pays nothing for them.
        self.delivery: WorkerDelivery | None = None
        self.delivery_conn = Connection(config.dsn, prepare=prepare, role="delivery")
        if dispatcher.destinations():
            board = DeliveryBoard(
                dispatcher, worker=self.name, probe_lease=config.handler_timeout + 5.0
            )
            self.delivery = WorkerDelivery(self, board)
            # Handlers of destinations with a breaker do not start while it stops them.
            self.specs = {t: board.guard(spec) for t, spec in self.specs.items()}

        # Sync handlers' runs wait in the pool's queue, async ones' in the lanes'.
        self.pool: SyncPool[Run, Result] | None = None
        self.lanes: AsyncLanes[Run] | None = None
        # Events of the batches not yet settled, beyond one per batch: the queues count a batch
        # as one entry. Changed on the loop only.
        self.batch_extra = 0
        self.want_more = asyncio.Event()  # set when the local queues ran low
        self.wakeup = asyncio.Event()  # a NOTIFY arrived
        self.stopping = asyncio.Event()
        # Everything this process holds a lease on: id -> token.
        self.leased: dict[int, uuid.UUID] = {}
        self.positions = ClaimPositions()  # where the next claim resumes
        self.excluded: list[str] = []  # event types the last claim left out
        # Held events that a worker crash already took down once (see _one_suspect).
        self.suspects: set[int] = set()
        self.completed: list[store.Claimed] = []  # delivered, not yet written
        self.failed: list[tuple[store.Failure, str]] = []  # (failure, event_type)
        self.released: list[store.Claimed] = []  # not started (breaker): given back
        self.results_ready = asyncio.Event()
        self.flush_lock = asyncio.Lock()
        self.low_water = max(1, config.batch_size // 2)
        self.crashed: BaseException | None = None

    # -- entry -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            logger.info("worker_stopping worker=%s", self.name)
            self.stopping.set()
            if self.lanes is not None:
                self.lanes.stop()
            self.want_more.set()
            self.wakeup.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self.pool = SyncPool(
            self.config.concurrency,
            run_item=self._run_sync,
            timeout_of=self._timeout_of,
            on_results=self._collect,
            loop=loop,
        )
        self.lanes = AsyncLanes(
            self.config.concurrency,
            call=self._call_async,
            done=self._async_done,
            failed=self._async_failed,
            timeout_of=self._timeout_of,
            on_yield=self._lanes_yield,
        )
        for lane in self.lanes.tasks:
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
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        if self.config.reaper_interval > 0:
            background.append(asyncio.create_task(self._reaper_loop(), name="reaper"))
        if self.config.listen:
            background.append(asyncio.create_task(self._listen_loop(), name="listener"))
        if self.delivery is not None:
            # The breakers' rows exist before the first outcome is counted against them.
            await self._with_db(self.delivery_conn, self.delivery.board.ensure)
            background.append(asyncio.create_task(self.delivery.loop(), name="delivery"))
        background.append(asyncio.create_task(self._backlog_loop(), name="backlog"))
        claimer = asyncio.create_task(self._claim_loop(), name="claimer")
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        for task in (claimer, flusher, *background):
            task.add_done_callback(self._task_ended)
        try:
            await self.stopping.wait()
            await claimer
            await self._shutdown()
        finally:
            self.results_ready.set()
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
            self.pool.stop()
            await self.lanes.close()
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

    def _queued(self) -> int:
        assert self.pool is not None and self.lanes is not None
        return self.lanes.queued() + self.pool.queued() + self.batch_extra

    async def _claim_loop(self) -> None:
        cfg = self.config
        while not self.stopping.is_set():
            await self.want_more.wait()
            if self.stopping.is_set():
                break
            if self._queued() >= self.low_water:
                self.want_more.clear()
                continue
            # A full batch whenever fewer than half a batch wait, rather than a top-up to one
            # batch: the handlers still have work while the claim runs, and claims are half as
            # many (measured: 0.75 -> 0.82 of the raw SQL loop, 2 processes, batch 1,000). So a
            # process holds at most one and a half batches of unstarted events.
            limit = cfg.batch_size
            # Cleared before the claim, so a notification that arrives during it is not lost.
            self.wakeup.clear()
            batch = await self._with_db(self.claim_conn, partial(self._claim, limit))
            if batch:
                self._route(batch)
            if batch is not None and len(batch) < limit:
                # Nothing more is due: sleep until a notification or the poll interval.
                wait = cfg.poll_interval
                if self.delivery is not None:  # a rate-limited destination refills sooner
                    wait = self.delivery.wait(wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), wait)
            elif self._queued() >= self.low_water:
                self.want_more.clear()

    async def _claim(self, limit: int, conn: psycopg.AsyncConnection[Any]) -> list[store.Claimed]:
        await self.expiry.sync_clock(conn)
        started = time.monotonic()
        excluded: list[str] = []
        if self.delivery is not None:
            excluded = self.delivery.excluded()
            if excluded != self.excluded:
                # A destination's events skipped while its breaker was open now lie behind
                # the places claims resume from: start the next claim from the beginning.
                self.positions.restart()
                self.excluded = excluded
        # The ordered claim always starts from the beginning (see worker_claim_ordered).
        after = self.positions.after(started) if self.ordering is None else None
        batch = await store.claim(
            conn,
            worker=self.name,
            limit=limit,
            lease_seconds=self.config.lease_seconds,
            after=after,
            excluded_types=excluded,
            ordered=None if self.ordering is None else self.ordering.params(),
        )
        self.positions.claimed(batch, full=after is None, started=started)
        if self.delivery is not None:
            batch += await self.delivery.claim_extra(conn, limit)
        if any(item.crash_attempts for item in batch):  # only ever after a crash
            batch = await self._one_suspect(conn, batch)
        return batch

    async def _one_suspect(
        self, conn: psycopg.AsyncConnection[Any], batch: list[store.Claimed]
    ) -> list[store.Claimed]:
        """Keep at most one event held through a crash (a suspect) in this process; give the
        others back for a moment (no attempt counted). If the suspect is poison, its next crash
        then takes no other suspect with it: the events it took down once are not counted
        towards poison again and again, and the poison event reaches --max-crashes alone."""
        self.suspects = {i for i in self.suspects if i in self.leased}
        extra = [item for item in batch if item.crash_attempts]
        if not self.suspects:
            self.suspects.add(extra.pop(0).id)
        if extra:
            # Due again at once: this process claims again as soon as its suspect is settled
            # (_flush_locked wakes it), others at their next poll or notification.
            await store.defer(conn, [(item.id, item.token) for item in extra], seconds=0)
            deferred = {item.id for item in extra}
            batch = [item for item in batch if item.id not in deferred]
        return batch

    def _route(self, batch: list[store.Claimed]) -> None:
        assert self.pool is not None and self.lanes is not None
        sync: list[Run] = []
        lanes: list[Run] = []
        grouped: dict[str, list[store.Claimed]] = {}  # events for batch handlers, by type
        leased = self.leased
        specs = self.specs
        # A claim that raced a breaker opening: its events for that destination go back.
        paused = self.delivery.board.paused_types if self.delivery is not None else ()
        back: list[tuple[int, uuid.UUID]] = []
        ttls = self.expiry.ttls
        for item in batch:
            leased[item.id] = item.token
            if paused and item.event_type in paused:
                back.append((item.id, item.token))
                continue
            spec = specs.get(item.event_type) or self._resolve(item.event_type)
            if spec is None:
                exc = LookupError(f"no handler registered for event type {item.event_type!r}")
                failure = self._failure(item, None, exc, time.monotonic(), traceback=False)
                self._settle(Outcome(item, "failed", 0.0, failure))
            elif (item.expires_at is not None or item.event_type in ttls) and self._expired(
                item, spec
            ):
                pass  # settled as expired: never delivered
            elif spec.max_batch is not None:
                grouped.setdefault(item.event_type, []).append(item)
            elif spec.is_async:
                lanes.append(item)
            else:
                sync.append(item)
        for event_type, items in grouped.items():
            spec = specs[event_type]
            size = spec.max_batch or 1
            for start in range(0, len(items), size):
                run = Batch(event_type, items[start : start + size])
                self.batch_extra += len(run.items) - 1
                if spec.is_async:
                    lanes.append(run)
                else:
                    sync.append(run)
        if sync:
            self.pool.submit(sync)
        if lanes:
            self.lanes.submit(lanes)
        if back and self.delivery is not None:
            self.delivery.release(back)
        if self.completed or self.failed:
            self.results_ready.set()

    def _resolve(self, event_type: str) -> HandlerSpec | None:
        """A type with no handler of its own: a route's relay, if one matches; kept in the
        per-event tables from then on."""
        spec = self.dispatcher.get(event_type)
        if spec is not None:
            self.specs[event_type] = spec
            self.timeouts[event_type] = spec.timeout or self.config.handler_timeout
        return spec

    def _expired(self, item: store.Claimed, spec: HandlerSpec) -> bool:
        """Settle the event as expired if its time is up (it is not delivered)."""
        try:
            self.expiry.check(item)
        except EventExpired as exc:
            failure = self._failure(
                item, spec, exc, time.monotonic(), permanent=True, traceback=False
            )
            self._settle(Outcome(item, "expired", 0.0, failure))
            return True
        return False

    # -- running handlers -----------------------------------------------------------------------

    def _timeout_of(self, item: Run) -> float:
        return self.timeouts.get(item.event_type, self.config.handler_timeout)

    def _run_sync(self, item: Run) -> Result:
        """In a pool thread: one sync handler call, every exception caught."""
        if isinstance(item, Batch):
            return self._run_batch(item)
        start = time.monotonic()
        spec = self.specs[item.event_type]
        assert isinstance(spec, EventHandlerSpec)  # a one-event run: a one-event handler
        try:
            self.expiry.check(item)  # claimed just before its expiry, it may have waited past it
            spec.func(decode.event(item))
        except DestinationPaused:
            return Outcome(item, "released", 0.0)
        except EventExpired as exc:
            failure = self._failure(item, spec, exc, start, permanent=True, traceback=False)
            return Outcome(item, "expired", time.monotonic() - start, failure)
        except PermanentError as exc:
            failure = self._failure(item, spec, exc, start, permanent=True)
            return Outcome(item, "permanent", time.monotonic() - start, failure)
        except Exception as exc:
            failure = self._failure(item, spec, exc, start)
            return Outcome(item, "failed", time.monotonic() - start, failure)
        return (item, time.monotonic() - start)

    def _run_batch(self, batch: Batch) -> list[Outcome | Delivered]:
        """In a pool thread: one call of a sync batch handler, every exception caught."""
        start = time.monotonic()
        spec = self.specs[batch.event_type]
        assert isinstance(spec, BatchHandlerSpec)
        try:
            spec.func([decode.event(item) for item in batch.items])
        except Exception as exc:
            return self._batch_outcomes(batch, spec, exc, start)
        seconds = time.monotonic() - start
        return [(item, seconds) for item in batch.items]

    def _batch_outcomes(
        self, batch: Batch, spec: HandlerSpec, exc: Exception, start: float, *, label: str = ""
    ) -> list[Outcome | Delivered]:
        """Each event's outcome when a batch handler raised: a BatchFailure fails the events it
        names, any other exception all of them. A traceback is formatted once per exception."""
        seconds = time.monotonic() - start
        if isinstance(exc, DestinationPaused):
            return [Outcome(item, "released", 0.0) for item in batch.items]
        if isinstance(exc, BatchFailure):
            errors: dict[int, BaseException] = exc.failures
            unknown = errors.keys() - {item.id for item in batch.items}
            if unknown:
                logger.warning(
                    "batch_failure_unknown_ids worker=%s event_type=%s ids=%s: not in the batch, "
                    "ignored",
                    self.name,
                    batch.event_type,
                    sorted(unknown)[:20],
                )
        else:
            errors = {item.id: exc for item in batch.items}
        tracebacks: dict[int, str] = {}  # id(exception) -> its formatted traceback
        out: list[Outcome | Delivered] = []
        for item in batch.items:
            error = errors.get(item.id)
            if error is None:
                out.append((item, seconds))
                continue
            permanent = isinstance(error, PermanentError)
            tb: str | bool = False  # the worker gave up on the call (label): no traceback
            if not label:
                tb = tracebacks.get(id(error)) or ""
                if not tb:
                    tb = tracebacks[id(error)] = "".join(format_exception(error))
            failure = self._failure(item, spec, error, start, permanent=permanent, traceback=tb)
            outcome_label = label or ("permanent" if permanent else "failed")
            out.append(Outcome(item, outcome_label, seconds, failure))
        return out

    def _call_async(self, run: Run) -> Awaitable[Any]:
        """In a lane: the async handler's awaitable for one event or a batch."""
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
        if type(run) is Batch:
            self._settle_batch([(item, seconds) for item in run.items])
            return
        self.completed.append(run)  # type: ignore[arg-type]  # not a Batch: one event
        if self._handled is not None:
            self._handled(run.event_type, "done", seconds)

    def _async_failed(self, run: Run, exc: Exception, start: float) -> None:
        spec = self.specs[run.event_type]
        if isinstance(run, Batch):
            self._settle_batch(self._batch_outcomes(run, spec, exc, start))
            return
        if isinstance(exc, DestinationPaused):
            self._settle(Outcome(run, "released", 0.0))
            self.results_ready.set()
            return
        permanent = isinstance(exc, PermanentError)
        expired = isinstance(exc, EventExpired)
        failure = self._failure(run, spec, exc, start, permanent=permanent, traceback=not expired)
        label = "expired" if expired else "permanent" if permanent else "failed"
        self._settle(Outcome(run, label, time.monotonic() - start, failure))
        self.results_ready.set()

    def _lanes_yield(self) -> None:
        """A lane lets the loop run: write what it delivered, claim if the queues ran low."""
        self.results_ready.set()
        if self._queued() < self.low_water:
            self.want_more.set()

    def _settle_batch(self, outcomes: list[Outcome | Delivered]) -> None:
        """On the loop: a batch's outcomes, one per event of the batch."""
        self.batch_extra -= len(outcomes) - 1
        self._settle_results(outcomes)
        # The queues counted this batch's events until now: the claimer may be waiting on them.
        if self._queued() < self.low_water:
            self.want_more.set()

    def _collect(self) -> None:
        """On the loop: results from the pool threads, a burst at a time."""
        assert self.pool is not None
        self._settle_results(self.pool.take_results())
        self.results_ready.set()
        if self._queued() < self.low_water:
            self.want_more.set()

    def _settle_results(self, results: Sequence[Result]) -> None:
        """On the loop: what handler threads or a batch handed back."""
        completed = self.completed
        handled = self._handled
        for result in results:
            if type(result) is tuple:  # delivered: the common case, inline
                item, seconds = result
                completed.append(item)
                if handled is not None:
                    handled(item.event_type, "done", seconds)
            elif type(result) is list:
                self._settle_batch(result)
            else:
                assert isinstance(result, Outcome)
                self._settle(result)

    def _settle(self, outcome: Outcome) -> None:
        if outcome.label == "released":  # its breaker stopped it before it started
            self.released.append(outcome.item)
            return
        if outcome.failure is None:
            self.completed.append(outcome.item)
        else:
            self.failed.append((outcome.failure, outcome.item.event_type))
        if self._handled is not None:
            self._handled(outcome.item.event_type, outcome.label, outcome.seconds)

    async def _watchdog_loop(self) -> None:
        """Handlers past their timeout: a failed attempt now, whatever they do later."""
        assert self.pool is not None
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            late = [(item, now - self._timeout_of(item)) for item in self.pool.expire(now)]
            assert self.lanes is not None
            for item, start in [*late, *self.lanes.expire(now)]:
                timeout = self._timeout_of(item)
                error = HandlerTimeout(f"handler did not finish within {timeout:g}s")
                self._give_up(item, error, start, "timeout")
                self.results_ready.set()

    def _give_up(self, item: Run, exc: Exception, start: float, label: str) -> None:
        """A run the worker stopped waiting for (timeout, shutdown): each event a failed
        attempt, without a traceback."""
        spec = self.specs.get(item.event_type)
        if isinstance(item, Batch):
            assert spec is not None
            self._settle_batch(self._batch_outcomes(item, spec, exc, start, label=label))
            return
        failure = self._failure(item, spec, exc, start, traceback=False)
        self._settle(Outcome(item, label, time.monotonic() - start, failure))

    def _failure(
        self,
        item: store.Claimed,
        spec: HandlerSpec | None,
        exc: BaseException,
        mono_start: float,
        *,
        permanent: bool = False,
        traceback: bool | str = True,  # or one already formatted
    ) -> store.Failure:
        policy = (spec.backoff if spec else None) or self.backoff
        tb = None
        if isinstance(traceback, str):
            tb = traceback[-MAX_TRACEBACK:]
        elif traceback:
            tb = "".join(format_exception(exc))[-MAX_TRACEBACK:]
        return store.Failure(
            id=item.id,
            token=item.token,
            error_type=exc.error_type if isinstance(exc, EventExpired) else type(exc).__name__,
            message=_text((str(exc) or type(exc).__name__)[:MAX_MESSAGE]),
            traceback=None if tb is None else _text(tb),
            # Monotonic readings; the fail statement turns them into the database's clock.
            started=mono_start,
            finished=time.monotonic(),
            permanent=permanent,
            # A handler that knows when to try again (a Retry-After) overrides the backoff.
            delay=exc.retry_after
            if isinstance(exc, RetryLater) and exc.retry_after is not None
            else policy.delay(item.attempts),
            destination=spec.destination if spec else None,
        )

    # -- writing outcomes -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self.results_ready.wait()
            self.results_ready.clear()
            if self.config.flush_interval and not self.stopping.is_set():
                await asyncio.sleep(self.config.flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        # One flush at a time: the shutdown's final flush must not find the lists already taken
        # by the flush loop, return, and let that loop be cancelled in the middle of its write.
        async with self.flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        done, self.completed = self.completed, []
        failed, self.failed = self.failed, []
        released, self.released = self.released, []
        if not done and not failed and not released:
            return
        dead: list[store.Transition] = []

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            nonlocal dead
            if done:
                await store.complete(conn, done)
            if failed:
                dead = await store.fail(conn, worker=self.name, failures=[f for f, _ in failed])
                if dead and self.ordering is not None:
                    await self.ordering.park_behind(conn, [t.id for t in dead])
            if self.delivery is not None:  # breakers count this flush with one statement
                await self.delivery.record(conn, done, failed)
            if released:
                await store.release(conn, [(item.id, item.token) for item in released])

        # Outcomes are retried through an outage until written; a lease that expires meanwhile
        # makes the write a no-op (the token no longer matches) and the event is redelivered.
        try:
            await self._with_db(self.flush_conn, write, until_stopped=False)
        except (psycopg.Error, ValueError) as exc:
            # Not an outage: this batch cannot be written as it is (ValueError: a value psycopg
            # could not encode). Drop it rather than stop
            # the process; its leases expire and the reaper records the attempts.
            logger.error(
                "flush_failed worker=%s done=%d failed=%d error=%s: %s",
                self.name,
                len(done),
                len(failed),
                type(exc).__name__,
                redact(" ".join(str(exc).split()))[:300],
            )
            for item in [*done, *released]:
                self.leased.pop(item.id, None)  # stop renewing: let the leases run out
            for f, _ in failed:
                self.leased.pop(f.id, None)
            return
        leased = self.leased
        for item in [*done, *released]:
            leased.pop(item.id, None)
        if self.ordering is not None:
            # A finished event may be what held its aggregate's next one: claim again now
            # rather than at the next poll.
            self.wakeup.set()
            self.want_more.set()
        error_types = {f.id: f.error_type for f, _ in failed}
        for f, _ in failed:
            self.leased.pop(f.id, None)
        if self.suspects and not any(i in leased for i in self.suspects):
            # The suspect is settled: claim the next one now rather than at the next poll.
            self.suspects.clear()
            self.wakeup.set()
            self.want_more.set()
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
                reap = partial(
                    store.reap,
                    max_crashes=self.config.max_crashes,
                    crash_backoff=self.config.crash_backoff,
                )
                moved = await self._with_db(self.upkeep_conn, reap)
                plan = self.ordering
                if moved and plan is not None and any(t.status == "dead" for t in moved):
                    dead_ids = [t.id for t in moved if t.status == "dead"]
                    await self._with_db(self.upkeep_conn, partial(plan.park_behind_conn, dead_ids))
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
                            "error_type=Poison",
                            t.id,
                            t.event_type,
                            t.aggregate_type,
                            t.attempts,
                        )
                        self.hooks.dead(t, "Poison")
                if not moved or len(moved) < 1000:
                    break

    async def _backlog_loop(self) -> None:
        """Keep the backlog estimate that publish's backpressure reads (one process at a time
        does the count; the others find it fresh and skip)."""
        while True:
            await asyncio.sleep(backpressure.REFRESH_SECONDS)
            await self._with_db(self.upkeep_conn, backpressure.refresh)

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
        assert self.pool is not None and self.lanes is not None
        unstarted = [
            (item.id, item.token)
            for run in [*self.pool.take_unstarted(), *self.lanes.take_unstarted()]
            for item in _events(run)
        ]
        if unstarted:
            released = await self._with_db(
                self.flush_conn, lambda c: store.release(c, unstarted), until_stopped=False
            )
            for event_id, _ in unstarted:
                self.leased.pop(event_id, None)
            logger.info("released_unstarted worker=%s count=%s", self.name, released)
        running = self.lanes.busy() + self.pool.busy()
        if running:
            logger.info(
                "waiting_for_handlers worker=%s count=%d grace_seconds=%g",
                self.name,
                running,
                self.config.grace_period,
            )
            deadline = time.monotonic() + self.config.grace_period
            while (self.lanes.busy() or self.pool.busy()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # A graceful stop costs the events nothing: handlers still running at the end of
            # the grace period are given back like unstarted ones (no attempt counted).
            cut = [
                (item.id, item.token)
                for run in [*self.pool.abandon_all(), *(r for r, _ in self.lanes.abandon_all())]
                for item in _events(run)
            ]
            if cut:
                released = await self._with_db(
                    self.flush_conn, lambda c: store.release(c, cut), until_stopped=False
                )
                for event_id, _ in cut:
                    self.leased.pop(event_id, None)
                logger.info("released_running worker=%s count=%s", self.name, released)
        self._collect()
        try:
            await asyncio.wait_for(self._flush(), timeout=15)
        except TimeoutError:
            logger.error(
                "final_flush_timeout worker=%s: outcomes not written; their leases will expire "
                "and the events will be delivered again",
                self.name,
            )


def _events(run: Run) -> list[store.Claimed]:
    return run.items if isinstance(run, Batch) else [run]


def _text(value: str) -> str:
    """An error text PostgreSQL can store. Its text holds neither NUL nor lone surrogates (what
    bytes that are not UTF-8 become when a handler decodes them with "surrogateescape"), and
    either would make the whole flush fail."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class HandlerTimeout(Exception):
    """The handler ran past its timeout."""


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
