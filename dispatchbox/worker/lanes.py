"""AsyncLanes: async handlers in a fixed set of long-lived tasks on the worker's event loop.

A task per event (create_task, an asyncio.timeout timer, a done callback, a wake-up of the
dispatch loop) cost 45% more CPU per no-op event than the sync path's threads. So, as the sync
pool does with threads, a fixed number of lanes (--concurrency) each take the next queued run
and await its handler directly: a handler that never suspends costs one coroutine call, and at
most --concurrency handlers are in flight at once.

- A lane that runs handlers which never suspend would keep the loop to itself; it yields every
  SLICE seconds so that the claimer, the flusher and the heartbeat keep running.
- Timeouts are the watchdog's, as for threads: ``expire`` gives up on a run past its deadline
  and cancels the lane's await; the caller settles that run (timed out), and the lane drops
  whatever the handler does afterwards. ``abandon_all`` does the same at the end of the grace
  period of a shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")  # what a lane runs: an event, or a batch of events

SLICE = 0.002  # seconds a lane may keep the loop before it lets the other tasks run


class AsyncLanes(Generic[T]):
    def __init__(
        self,
        size: int,
        *,
        call: Callable[[T], Awaitable[Any]],
        done: Callable[[T, float], None],
        failed: Callable[[T, Exception, float], None],
        timeout_of: Callable[[T], float],
        on_yield: Callable[[], None],
    ) -> None:
        self._call = call
        self._done = done
        self._failed = failed
        self._timeout_of = timeout_of
        self._on_yield = on_yield
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        # What each lane runs now: its task -> (run, monotonic start, deadline).
        self._running: dict[asyncio.Task[None], tuple[T, float, float]] = {}
        self.tasks = [asyncio.create_task(self._lane(), name=f"lane-{i}") for i in range(size)]

    def submit(self, runs: Iterable[T]) -> None:
        self._queue.extend(runs)
        self._wake.set()

    def queued(self) -> int:
        return len(self._queue)

    def busy(self) -> int:
        return len(self._running)

    def take_unstarted(self) -> list[T]:
        runs = list(self._queue)
        self._queue.clear()
        return runs

    def expire(self, now: float) -> list[tuple[T, float]]:
        """Runs past their deadline, with their start: the caller settles them; the lanes stop
        waiting for them."""
        late = [task for task, (_, _, deadline) in self._running.items() if now >= deadline]
        return [self._abandon(task) for task in late]

    def abandon_all(self) -> list[tuple[T, float]]:
        """Every run in flight (the shutdown's grace period is over)."""
        return [self._abandon(task) for task in list(self._running)]

    def stop(self) -> None:
        """No lane starts another run; runs in flight go on (see abandon_all)."""
        self._stopping = True
        self._wake.set()

    async def close(self, timeout: float = 5.0) -> None:
        self.stop()
        await asyncio.wait(self.tasks, timeout=timeout)

    def _abandon(self, task: asyncio.Task[None]) -> tuple[T, float]:
        run, start, _ = self._running.pop(task)
        task.cancel()
        return run, start

    async def _lane(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        queue, running = self._queue, self._running
        call, done, failed, timeout_of = self._call, self._done, self._failed, self._timeout_of
        monotonic = time.monotonic
        yield_at = monotonic() + SLICE
        while True:
            while not queue or self._stopping:
                if self._stopping:
                    return
                self._on_yield()
                self._wake.clear()
                await self._wake.wait()
                yield_at = monotonic() + SLICE
            run = queue.popleft()
            start = monotonic()
            running[task] = (run, start, start + timeout_of(run))
            try:
                await call(run)
            except asyncio.CancelledError:
                if task in running:  # not ours: the loop itself is being torn down
                    raise
                task.uncancel()  # expire() or abandon_all(): the run is settled already
            except Exception as exc:
                if running.pop(task, None) is None:
                    task.uncancel()  # given up on, and the handler swallowed the cancellation
                else:
                    failed(run, exc, start)
            else:
                end = monotonic()
                if running.pop(task, None) is None:
                    task.uncancel()  # given up on, and the handler swallowed the cancellation
                else:
                    done(run, end - start)
            if monotonic() >= yield_at:
                self._on_yield()
                await asyncio.sleep(0)
                yield_at = monotonic() + SLICE
