"""AsyncLanes on a real event loop: every run once, the loop kept alive by handlers that never
suspend, at most `size` in flight, timeouts and shutdown that drop what a handler does later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dispatchbox.worker.lanes import AsyncLanes


class Lanes:
    """Lanes whose runs are ints, handled by `handler`, with what they reported collected."""

    def __init__(
        self, size: int, handler: Callable[[int], Awaitable[Any]], timeout: float = 30.0
    ) -> None:
        self.done: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.yields = 0
        self.lanes: AsyncLanes[int] = AsyncLanes(
            size,
            call=handler,
            done=lambda run, seconds: self.done.append(run),
            failed=lambda run, exc, start: self.failed.append((run, repr(exc))),
            timeout_of=lambda run: timeout,
            on_yield=self._yielded,
        )

    def _yielded(self) -> None:
        self.yields += 1


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_every_run_once_and_the_loop_keeps_running_beside_handlers_that_never_suspend() -> None:
    async def scenario() -> None:
        async def noop(run: int) -> None:
            if run % 7 == 0:
                raise ValueError(run)

        lanes = Lanes(4, noop)
        ticks = 0

        async def other_task() -> None:  # stands in for the claimer, flusher and heartbeat
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_task())
        started = time.monotonic()
        lanes.lanes.submit(range(200_000))
        await until(lambda: len(lanes.done) + len(lanes.failed) == 200_000, 60)
        elapsed = time.monotonic() - started
        ticker.cancel()
        assert sorted(lanes.done) == [r for r in range(200_000) if r % 7]
        assert sorted(r for r, _ in lanes.failed) == list(range(0, 200_000, 7))
        assert lanes.failed[0][1] == "ValueError(0)"
        # The lanes let the loop run every 2 ms or so of handler work, not once at the end.
        assert ticks >= 10 and lanes.yields >= 10, (ticks, lanes.yields, elapsed)
        await lanes.lanes.close()

    asyncio.run(scenario())


def test_at_most_size_handlers_in_flight() -> None:
    async def scenario() -> None:
        now_running = 0
        most = 0

        async def sleepy(run: int) -> None:
            nonlocal now_running, most
            now_running += 1
            most = max(most, now_running)
            await asyncio.sleep(0.001)
            now_running -= 1

        lanes = Lanes(3, sleepy)
        lanes.lanes.submit(range(60))
        await until(lambda: len(lanes.done) == 60)
        assert most == 3
        assert lanes.lanes.busy() == 0 and lanes.lanes.queued() == 0
        await lanes.lanes.close()

    asyncio.run(scenario())


def test_an_expired_run_is_handed_back_and_its_lane_goes_on() -> None:
    async def scenario() -> None:
        async def handler(run: int) -> None:
            if run == 0:
                await asyncio.sleep(60)

        lanes = Lanes(1, handler, timeout=0.05)
        lanes.lanes.submit([0, 1, 2])
        await until(lambda: lanes.lanes.busy() == 1)
        assert lanes.lanes.expire(time.monotonic()) == []  # not late yet
        expired = lanes.lanes.expire(time.monotonic() + 1)
        assert [run for run, _ in expired] == [0]
        await until(lambda: lanes.done == [1, 2])
        assert lanes.failed == [], "the caller settles an expired run, not the lane"
        await lanes.lanes.close()

    asyncio.run(scenario())


def test_a_handler_that_swallows_the_cancellation_has_its_result_dropped() -> None:
    async def scenario() -> None:
        async def stubborn(run: int) -> None:
            if run == 0:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    return  # claims success after being given up on
            await asyncio.sleep(0.01)  # later runs of the lane really await

        lanes = Lanes(1, stubborn)
        lanes.lanes.submit([0, 1])
        await until(lambda: lanes.lanes.busy() == 1)
        (abandoned,) = lanes.lanes.expire(time.monotonic() + 60)
        assert abandoned[0] == 0
        await until(lambda: lanes.done == [1])
        assert 0 not in lanes.done
        task = lanes.lanes.tasks[0]
        assert task.cancelling() == 0, "the lane is not left half-cancelled"
        await lanes.lanes.close()

    asyncio.run(scenario())


def test_after_stop_no_run_starts_and_the_rest_can_be_taken_back() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        started: list[int] = []

        async def gated(run: int) -> None:
            started.append(run)
            await gate.wait()

        lanes = Lanes(2, gated)
        lanes.lanes.submit(range(10))
        await until(lambda: len(started) == 2)
        lanes.lanes.stop()
        assert sorted(lanes.lanes.take_unstarted()) == list(range(2, 10))
        assert lanes.lanes.busy() == 2
        abandoned = sorted(run for run, _ in lanes.lanes.abandon_all())
        assert abandoned == [0, 1]
        gate.set()
        await lanes.lanes.close()
        assert all(task.done() for task in lanes.lanes.tasks)
        assert started == [0, 1] and lanes.done == [] and lanes.failed == []

    asyncio.run(scenario())
