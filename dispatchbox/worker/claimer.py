"""Claiming: the claim loop, where the next claim resumes, and routing claimed events.

Owns when to claim (whenever fewer than half a batch wait in the local queues), the claim
itself through the data layer (worker_claim, resumed after the last claim's place per priority:
worker/claim_position.py; the ordered claim; the breakers' extra claims), at most one event held
through a crash per process (a suspect), and the routing of each claimed event: to the sync pool
or the async lanes (worker/handlers.py), grouped into batches for batch handlers, or straight
to the outcome book when it cannot run (no handler, expired). Its hand-off is one way: claimed
events go to the handler runner or the outcome book, never back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.data.worker import Claimed
from dispatchbox.dispatcher import HandlerSpec
from dispatchbox.errors import EventExpired
from dispatchbox.worker.claim_position import ClaimPositions
from dispatchbox.worker.outcomes import Batch, Run

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess

logger = logging.getLogger("dispatchbox.worker")


class Claimer:
    def __init__(self, proc: WorkerProcess) -> None:
        self.proc = proc
        self.positions = ClaimPositions()  # where the next claim resumes
        self.excluded: list[str] = []  # event types the last claim left out
        # Held events that a worker crash already took down once (see _one_suspect).
        self.suspects: set[int] = set()
        self.sent = 0.0  # when the last claim was sent (monotonic)
        self.tokens: set[uuid.UUID] = set()  # and the lease tokens it returned

    async def loop(self) -> None:
        proc = self.proc
        cfg = proc.config
        while not proc.stopping.is_set():
            await proc.want_more.wait()
            if proc.stopping.is_set():
                break
            if proc.queued() >= proc.low_water:
                proc.want_more.clear()
                continue
            # A full batch whenever fewer than half a batch wait, rather than a top-up to one
            # batch: the handlers still have work while the claim runs, and claims are half as
            # many (measured: 0.75 -> 0.82 of the raw SQL loop, 2 processes, batch 1,000). So a
            # process holds at most one and a half batches of unstarted events.
            limit = cfg.batch_size
            # Cleared before the claim, so a notification that arrives during it is not lost.
            proc.wakeup.clear()
            batch = await proc.with_db(proc.claim_conn, partial(self._claim, limit))
            if batch and proc.lease_clock.late(self.sent):
                self._too_late(batch)
            elif batch:
                # Known to the lease clock and leased in one step: a heartbeat in between
                # would forget the tokens of events not yet in proc.leased.
                proc.lease_clock.claimed(self.tokens, self.sent)
                self.route(batch)
            if batch is not None and len(batch) < limit:
                # Nothing more is due: sleep until a notification or the poll interval.
                wait = cfg.poll_interval
                if proc.delivery is not None:  # a rate-limited destination refills sooner
                    wait = proc.delivery.wait(wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wakeup.wait(), wait)
            elif proc.queued() >= proc.low_water:
                proc.want_more.clear()

    async def _claim(self, limit: int, conn: psycopg.AsyncConnection[Any]) -> list[Claimed]:
        proc = self.proc
        await proc.expiry.sync_clock(conn)
        self.sent = started = time.monotonic()
        excluded: list[str] = []
        if proc.delivery is not None:
            excluded = proc.delivery.excluded()
            if excluded != self.excluded:
                # A destination's events skipped while its breaker was open now lie behind
                # the places claims resume from: start the next claim from the beginning.
                self.positions.restart()
                self.excluded = excluded
        # The ordered claim always starts from the beginning (see worker_claim_ordered).
        ordering = proc.ordering
        after = self.positions.after(started) if ordering is None else None
        batch = await worker_data.claim(
            conn,
            worker=proc.name,
            limit=limit,
            lease_seconds=proc.config.lease_seconds,
            after=after,
            excluded_types=excluded,
            ordered=None if ordering is None else ordering.params(),
        )
        self.positions.claimed(batch, full=after is None, started=started)
        self.tokens = {batch[0].token} if batch else set()
        if proc.delivery is not None:
            extra = await proc.delivery.claim_extra(conn, limit)
            self.tokens.update(item.token for item in extra)
            batch += extra
        if any(item.crash_attempts for item in batch):  # only ever after a crash
            batch = await self._one_suspect(conn, batch)
        return batch

    async def _one_suspect(
        self, conn: psycopg.AsyncConnection[Any], batch: list[Claimed]
    ) -> list[Claimed]:
        """Keep at most one event held through a crash (a suspect) in this process; give the
        others back for a moment (no attempt counted). If the suspect is poison, its next crash
        then takes no other suspect with it: the events it took down once are not counted
        towards poison again and again, and the poison event reaches --max-crashes alone."""
        leased = self.proc.leased
        self.suspects = {i for i in self.suspects if i in leased}
        extra = [item for item in batch if item.crash_attempts]
        if not self.suspects:
            self.suspects.add(extra.pop(0).id)
        if extra:
            # Due again at once: this process claims again as soon as its suspect is settled
            # (suspect_settled wakes it), others at their next poll or notification.
            await worker_data.defer(conn, [(item.id, item.token) for item in extra], seconds=0)
            deferred = {item.id for item in extra}
            batch = [item for item in batch if item.id not in deferred]
        return batch

    def _too_late(self, batch: list[Claimed]) -> None:
        """The claim's reply came back when its leases were about to run out (a network
        partition held it back): give its events back rather than run what another process may
        already have taken over."""
        proc = self.proc
        logger.warning(
            "claim_late worker=%s given_back=%d waited=%.1fs: the claim's reply took more than "
            "half its lease",
            proc.name,
            len(batch),
            time.monotonic() - self.sent,
        )
        proc.book.released.extend(batch)
        proc.book.ready.set()

    def suspect_settled(self) -> bool:
        """After a flush: True (and forgotten) when this process's suspect is settled."""
        if self.suspects and not any(i in self.proc.leased for i in self.suspects):
            self.suspects.clear()
            return True
        return False

    def route(self, batch: list[Claimed]) -> None:
        proc = self.proc
        book = proc.book
        sync: list[Run] = []
        lanes: list[Run] = []
        grouped: dict[str, list[Claimed]] = {}  # events for batch handlers, by type
        leased = proc.leased
        specs = proc.specs
        # A claim that raced a breaker opening: its events for that destination go back.
        paused = proc.delivery.board.paused_types if proc.delivery is not None else ()
        back: list[tuple[int, uuid.UUID]] = []
        ttls = proc.expiry.ttls
        for item in batch:
            leased[item.id] = item.token
            if paused and item.event_type in paused:
                back.append((item.id, item.token))
                continue
            spec = specs.get(item.event_type) or self._resolve(item.event_type)
            if spec is None:
                exc = LookupError(f"no handler registered for event type {item.event_type!r}")
                book.record(book.outcome_of(item, None, exc, time.monotonic(), "failed"))
            elif (item.expires_at is not None or item.event_type in ttls) and self._expired(
                item, spec
            ):
                pass  # recorded as expired: never delivered
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
                proc.batch_extra += len(run.items) - 1
                if spec.is_async:
                    lanes.append(run)
                else:
                    sync.append(run)
        proc.handlers.submit(sync, lanes)
        if back and proc.delivery is not None:
            proc.delivery.release(back)
        if book.completed or book.failed:
            book.ready.set()

    def _resolve(self, event_type: str) -> HandlerSpec | None:
        """A type with no handler of its own: a route's relay, if one matches; kept in the
        per-event tables from then on."""
        proc = self.proc
        spec = proc.dispatcher.get(event_type)
        if spec is not None:
            proc.specs[event_type] = spec
            proc.timeouts[event_type] = spec.timeout or proc.config.handler_timeout
        return spec

    def _expired(self, item: Claimed, spec: HandlerSpec) -> bool:
        """Record the event as expired if its time is up (it is not delivered)."""
        try:
            self.proc.expiry.check(item)
        except EventExpired as exc:
            book = self.proc.book
            book.record(book.outcome_of(item, spec, exc, time.monotonic(), ""))
            return True
        return False
