"""The worker's side of delivery controls (dispatchbox.delivery): a task that keeps the process's
view of the breakers current, gives back what it claimed for a destination whose breaker
opened, runs the probes and the replays; and the two hooks the claim and the flush call.

Only created when the app configured a destination (``Dispatcher.destination()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data
from dispatchbox.db import connect_async
from dispatchbox.delivery.board import REFRESH, Change, DeliveryBoard
from dispatchbox.delivery.replay import replay
from dispatchbox.worker.outage import CONNECTION_ERRORS
from dispatchbox.worker.outcomes import events

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess

logger = logging.getLogger("dispatchbox.worker")


class WorkerDelivery:
    """Breakers and rate limits for one WorkerProcess."""

    def __init__(self, proc: WorkerProcess, board: DeliveryBoard) -> None:
        self.proc = proc
        self.board = board
        self._replays: set[asyncio.Task[Any]] = set()

    # -- hooks of the claim and the flush ------------------------------------------------------

    def excluded(self) -> list[str]:
        """Event types the ordinary claim leaves out (breaker not closed, or rate-limited)."""
        return self.board.excluded()

    async def claim_extra(
        self, conn: psycopg.AsyncConnection[Any], limit: int
    ) -> list[worker_data.Claimed]:
        """What the ordinary claim left out and may be claimed now: rate-limited destinations'
        events against their buckets, half-open probes."""
        items: list[worker_data.Claimed] = []
        if self.board.wants_extra():
            for rows, token in await self.board.claim_extra(
                conn, limit=limit, lease_seconds=self.proc.config.lease_seconds
            ):
                items += worker_data.claimed_rows(rows, token)
        return items

    def wait(self, poll_interval: float) -> float:
        return self.board.wait_hint(poll_interval)

    async def record(
        self,
        conn: psycopg.AsyncConnection[Any],
        done: Sequence[worker_data.Claimed],
        failed: Sequence[tuple[worker_data.Failure, str]],
    ) -> None:
        changes = await self.board.record(
            conn,
            (item.event_type for item in done),
            ((event_type, f.permanent, f"{f.error_type}: {f.message}") for f, event_type in failed),
        )
        if changes:
            self.react(changes)

    # -- the task -------------------------------------------------------------------------------

    async def loop(self) -> None:
        proc = self.proc
        conn = proc.delivery_conn
        while True:
            await asyncio.sleep(REFRESH)
            changes = await proc.with_db(conn, self.board.refresh)
            if changes:
                self.react(changes)
            if self.board.probe_wanted:
                proc.wakeup.set()
                proc.want_more.set()

    def react(self, changes: list[Change]) -> None:
        """On the loop: a breaker opened (give back what was claimed for it) or closed (claim
        again at once; take the replay if one is due)."""
        if any(c.state != "closed" for c in changes):
            self._give_back()
        if any(c.state == "closed" for c in changes):
            self.proc.wakeup.set()
            self.proc.want_more.set()
            task = asyncio.create_task(self._take_replays(), name="replay")
            self._replays.add(task)
            task.add_done_callback(self._replays.discard)

    def _give_back(self) -> None:
        """Unstarted events of paused destinations go back to pending, their attempt not spent;
        the other destinations' events keep their place in the queues."""
        proc = self.proc
        paused = self.board.paused_types
        back: list[tuple[int, Any]] = []
        for run in proc.handlers.withdraw(lambda run: run.event_type in paused):
            items = events(run)
            proc.batch_extra -= len(items) - 1
            back += [(item.id, item.token) for item in items]
        if back:
            self.release(back)

    def release(self, items: list[tuple[int, Any]]) -> None:
        task = asyncio.create_task(self._release(items), name="release")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _release(self, items: list[tuple[int, Any]]) -> None:
        proc = self.proc
        released = await proc.with_db(
            proc.flush_conn, lambda c: worker_data.release(c, items), until_stopped=False
        )
        for event_id, _ in items:
            proc.leased.pop(event_id, None)
        logger.info(
            "breaker_released worker=%s count=%s: claimed for a destination whose breaker "
            "opened, given back without spending an attempt",
            proc.name,
            released,
        )
        if proc.queued() < proc.low_water:
            proc.want_more.set()

    async def _take_replays(self) -> None:
        board = self.board
        names = [n for n in board.breakers if board.configs[n].replay_dead_on_recovery]
        if not names:
            return
        conn_holder = self.proc.delivery_conn
        try:
            taken = await self.proc.with_db(
                conn_holder,
                lambda c: worker_data.take_replay(c, names),
            )
            for row in taken or []:
                name = row["destination"]
                # A connection of its own: a long replay must not hold up the breaker refresh.
                conn = await connect_async(
                    self.proc.config.dsn, autocommit=True, application_name="dispatchbox-replay"
                )
                async with conn:
                    await replay(
                        conn,
                        board.configs[name],
                        board.types[name],
                        since=row["since"],
                        until=row["until"],
                    )
        except CONNECTION_ERRORS as exc:
            logger.error("breaker_replay_failed error=%s", type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._replays):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._replays, return_exceptions=True)
