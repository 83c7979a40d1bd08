"""SyncPool: timeouts abandon a stuck handler without blocking shutdown on it (no database)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatchbox.data.worker import Claimed
from dispatchbox.worker import threads
from dispatchbox.worker.threads import SyncPool


def _item(event_id: int) -> Claimed:
    now = datetime.now(UTC)
    return Claimed(
        event_id, "a", "1", "t", "{}", "{}", 1, now, event_id, 5, 0, None, 0, uuid.uuid4()
    )


def test_an_abandoned_handler_no_longer_counts_as_busy() -> None:
    release = threading.Event()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool: SyncPool[int] = SyncPool(
            2,
            run_item=lambda item: release.wait(10) and item.id,
            timeout_of=lambda item: 0.05,
            on_results=lambda: None,
            loop=loop,
        )
        pool.submit([_item(1)])
        deadline = time.monotonic() + 5
        while pool.busy() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.busy() == 1
        expired = pool.expire(time.monotonic() + 1)
        assert [i.id for i in expired] == [1]
        assert pool.busy() == 0, "its outcome is settled; shutdown must not wait for it"
        pool.submit([_item(2)])  # the replacement thread keeps the pool at its size
        deadline = time.monotonic() + 5
        while pool.busy() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.busy() == 1
        release.set()
        pool.stop()

    asyncio.run(scenario())


def _run_pool(
    size: int,
    run_item: Callable[[Claimed], int],
    scenario: Callable[[SyncPool[int], list[int]], Any],
) -> Any:
    """Run `scenario(pool, collected)` on a loop; the pool's results land in `collected`."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        collected: list[int] = []
        pool: SyncPool[int] = SyncPool(
            size,
            run_item=run_item,
            timeout_of=lambda item: 30.0,
            on_results=lambda: collected.extend(pool.take_results()),
            loop=loop,
        )
        try:
            return await scenario(pool, collected)
        finally:
            pool.stop()

    return asyncio.run(main())


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_every_event_runs_once_under_contention() -> None:
    # Threads take shares, steal from each other and hand results back without a lock: none
    # of that may lose or repeat an event.
    runs: list[int] = []

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        for start in range(0, 20_000, 500):
            pool.submit([_item(i) for i in range(start, start + 500)])
            await asyncio.sleep(0)
        await _until(lambda: len(collected) >= 20_000)
        await asyncio.sleep(0.05)
        assert sorted(collected) == list(range(20_000))
        assert sorted(runs) == list(range(20_000))

    def run(item: Claimed) -> int:
        runs.append(item.id)
        return item.id

    _run_pool(8, run, scenario)


def test_an_idle_thread_steals_what_a_busy_one_holds() -> None:
    # One thread takes a share whose first event is slow; the rest of its share must not wait
    # for it while the other thread is idle.
    slow = threading.Event()

    def run(item: Claimed) -> int:
        if item.id == 0:
            slow.wait(10)
        return item.id

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        # 2 threads; a queue of 64 gives a share of 16 to the first taker.
        pool.submit([_item(i) for i in range(64)])
        await _until(lambda: len(collected) == 63, timeout=5)
        assert 0 not in collected
        slow.set()
        await _until(lambda: len(collected) == 64)

    _run_pool(2, run, scenario)


def test_a_timed_out_thread_gives_back_its_share_and_shutdown_gets_the_rest() -> None:
    stuck = threading.Event()
    started = threading.Event()

    def run(item: Claimed) -> int:
        if item.id == 0:
            started.set()
            stuck.wait(10)
        return item.id

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        pool.submit([_item(i) for i in range(40)])  # 1 thread: share of 16, then the rest
        await _until(started.is_set)
        # The stuck thread may still hold part of its share: expiring it hands that back.
        expired = pool.expire(time.monotonic() + 60)
        assert [i.id for i in expired] == [0]
        await _until(lambda: len(collected) == 39)
        assert sorted(collected) == list(range(1, 40))
        assert pool.busy() == 0
        stuck.set()
        await asyncio.sleep(0.05)
        assert 0 not in collected, "an abandoned run's result is dropped"

    _run_pool(1, run, scenario)


def test_take_unstarted_includes_what_threads_hold() -> None:
    gate = threading.Event()

    def run(item: Claimed) -> int:
        gate.wait(10)
        return item.id

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        pool.submit([_item(i) for i in range(100)])
        await _until(lambda: pool.busy() == 2)
        unstarted = pool.take_unstarted()
        assert pool.queued() == 0
        running = 100 - len(unstarted)
        assert running == 2, "everything but the two running events comes back"
        gate.set()
        await _until(lambda: len(collected) == 2)
        ran = set(collected)
        assert ran.isdisjoint(i.id for i in unstarted)
        assert ran | {i.id for i in unstarted} == set(range(100))

    _run_pool(2, run, scenario)


def test_a_finished_handler_counts_as_busy_until_its_result_is_collectable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shutdown waits while busy() > 0, then collects once: a thread between its handler's
    # return and handing the result over must still count, or that result misses the last
    # flush. A slow ticket take stands in for losing the GIL at that moment.
    returned = threading.Event()
    take_ticket = threads._take_ticket

    def slow_take_ticket(ticket: list[None]) -> bool:
        time.sleep(0.2)
        return take_ticket(ticket)

    monkeypatch.setattr(threads, "_take_ticket", slow_take_ticket)

    def run(item: Claimed) -> int:
        returned.set()
        return item.id

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        pool.submit([_item(1)])
        await _until(returned.is_set)
        while pool.busy():
            await asyncio.sleep(0.005)
        assert collected + pool.take_results() == [1]

    _run_pool(1, run, scenario)


def test_no_handler_starts_after_stop() -> None:
    gate = threading.Event()
    started: list[int] = []

    def run(item: Claimed) -> int:
        started.append(item.id)
        gate.wait(10)
        return item.id

    async def scenario(pool: SyncPool[int], collected: list[int]) -> None:
        pool.submit([_item(i) for i in range(100)])  # each thread takes a share of 16
        await _until(lambda: len(started) == 2)
        pool.stop()
        gate.set()
        await asyncio.sleep(0.2)
        assert len(started) == 2, "the held shares stay unstarted once the pool stops"

    _run_pool(2, run, scenario)
