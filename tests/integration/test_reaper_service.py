"""The reaper as a maintenance service: its sweeps, its config, its test signal and its hook, on a
real PostgreSQL. Leases are back-dated rather than waited out; tests wait on the reaper's
``wait_sweeps`` signal, never on a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from dispatchbox import Dispatcher, publish_many
from dispatchbox.data import worker as store
from dispatchbox.maintenance.reaper import Reaper, ReaperConfig
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.hooks import WorkerHooks
from dispatchbox.worker.process import WorkerProcess

T = TypeVar("T")
AsyncConn = psycopg.AsyncConnection[Any]


def seed(dsn: str, count: int) -> list[int]:
    events = [
        {"aggregate_type": "order", "aggregate_id": str(i), "event_type": "e", "payload": {}}
        for i in range(count)
    ]
    with psycopg.connect(dsn) as conn:
        return publish_many(conn, events)


async def claim_and_expire(conn: AsyncConn, worker: str, limit: int) -> None:
    """Claim due events as ``worker`` and let their leases run out (back-dated)."""
    await conn.execute("UPDATE outbox_event SET next_attempt_at = now() WHERE status = 'pending'")
    await store.claim(conn, worker=worker, limit=limit, lease_seconds=60)
    await conn.execute(
        "UPDATE outbox_event SET locked_until = now() - interval '1 second'"
        " WHERE status = 'running'"
    )


def on(conn: AsyncConn) -> Callable[[Callable[[AsyncConn], Awaitable[T]]], Awaitable[T | None]]:
    async def db(op: Callable[[AsyncConn], Awaitable[T]]) -> T | None:
        return await op(conn)

    return db


def test_each_sweep_takes_back_every_expired_lease_in_batches_and_signals(db_dsn: str) -> None:
    ids = seed(db_dsn, 5)
    reaped: list[store.Transition] = []

    async def scenario() -> tuple[int, int]:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        await claim_and_expire(conn, "A", 5)
        # Two events a statement: one sweep runs three statements and moves all five.
        config = ReaperConfig(interval=0.05, batch_size=2, crash_backoff=0)
        reaper = Reaper(config, on(conn), reaped=reaped.append)
        task = asyncio.create_task(reaper.run())
        await asyncio.wait_for(reaper.wait_sweeps(1), 10)
        first = len(reaped)
        await asyncio.wait_for(reaper.wait_sweeps(3), 10)  # later sweeps find nothing
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()
        return first, reaper.sweeps

    first, sweeps = asyncio.run(scenario())
    assert first == 5 and sweeps >= 3
    assert sorted(t.id for t in reaped) == sorted(ids)
    assert {(t.status, t.locked_by) for t in reaped} == {("pending", "A")}
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT status, crash_attempts, attempts FROM outbox_event ORDER BY id"
        ).fetchall()
    assert rows == [("pending", 1, 0)] * 5


def test_poison_goes_dead_at_max_crashes_and_is_parked_behind(db_dsn: str) -> None:
    (event_id,) = seed(db_dsn, 1)
    reaped: list[store.Transition] = []
    parked: list[list[int]] = []

    async def park(conn: AsyncConn, dead_ids: list[int]) -> None:
        parked.append(dead_ids)

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        config = ReaperConfig(max_crashes=2, crash_backoff=0)
        reaper = Reaper(config, on(conn), reaped=reaped.append, park_behind=park)
        for worker in ("A", "B"):
            await claim_and_expire(conn, worker, 1)
            await reaper.sweep()
        await reaper.wait_sweeps(2)  # already there: returns at once
        await conn.close()

    asyncio.run(scenario())
    assert [(t.id, t.status, t.locked_by) for t in reaped] == [
        (event_id, "pending", "A"),
        (event_id, "dead", "B"),
    ]
    assert parked == [[event_id]]


class Recorder(WorkerHooks):
    def __init__(self) -> None:
        self.expired: list[tuple[int, str]] = []
        self.deaths: list[tuple[int, str]] = []

    def lease_expired(self, transition: store.Transition) -> None:
        self.expired.append((transition.id, transition.status))

    def dead(self, transition: store.Transition, error_type: str) -> None:
        self.deaths.append((transition.id, error_type))


def test_the_worker_runs_the_reaper_with_its_settings_and_hooks(db_dsn: str) -> None:
    # What `dispatchbox worker` runs in each process: a reaper built from the command line's
    # settings, whose hook tells the worker's hooks (metrics, alerts) of each expired lease.
    (event_id,) = seed(db_dsn, 1)
    dispatcher = Dispatcher()

    @dispatcher.handler("e")
    def handle(event: Any) -> None:
        pass

    hooks = Recorder()
    config = WorkerConfig(
        dsn=db_dsn, app="x:y", reaper_interval=2.5, max_crashes=1, crash_backoff=0
    )
    proc = WorkerProcess(config, dispatcher, hooks=hooks)
    assert proc.reaper.config == ReaperConfig(interval=2.5, max_crashes=1, crash_backoff=0)

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        await claim_and_expire(conn, "A", 1)
        await conn.close()
        await proc.reaper.sweep()
        await proc.upkeep_conn.close()

    asyncio.run(scenario())
    assert hooks.expired == [(event_id, "dead")]
    assert hooks.deaths == [(event_id, "Poison")]
    assert proc.reaper.sweeps == 1
