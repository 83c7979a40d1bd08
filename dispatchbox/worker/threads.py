"""SyncPool: run sync handlers in a fixed set of threads with as little hand-off as possible.

A per-event hand-off (executor.submit, then a loop wake-up per result) costs more than a no-op
handler by far, and with the GIL the threads convoy behind the event loop. Here the threads pull
events from one shared deque, and results go back in bursts: one loop callback wakes the loop for
however many results piled up since the last one.

Timeouts: a thread cannot be interrupted. The loop's watchdog marks an event whose handler ran
past its deadline as timed out (a failed attempt), ignores whatever the handler returns later,
and starts a replacement thread so that the pool keeps its size.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dispatchbox.worker.store import Claimed

R = TypeVar("R")


@dataclass(slots=True)
class _Running:
    item: Claimed
    deadline: float  # monotonic


class SyncPool(Generic[R]):
    def __init__(
        self,
        size: int,
        *,
        run_item: Callable[[Claimed], R],
        timeout_of: Callable[[Claimed], float],
        on_results: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        name: str = "dispatchbox-handler",
    ) -> None:
        self.size = size
        self._run_item = run_item
        self._timeout_of = timeout_of
        self._on_results = on_results
        self._loop = loop
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[Claimed] = deque()
        self._running: dict[int, _Running] = {}  # thread id -> what it runs
        self._abandoned: set[int] = set()  # thread ids whose current result is to be dropped
        self._retired: set[int] = set()  # thread ids that exit after their current item
        self._results: list[R] = []
        self._wake_pending = False
        self._stopping = False
        self._threads = 0
        for _ in range(size):
            self._spawn()

    # -- called from the event loop --------------------------------------------------------

    def submit(self, items: list[Claimed]) -> None:
        with self._cond:
            self._queue.extend(items)
            self._cond.notify(len(items))

    def queued(self) -> int:
        return len(self._queue)

    def busy(self) -> int:
        """Handlers running whose outcome still counts (abandoned ones were already settled)."""
        with self._cond:
            return len(self._running.keys() - self._abandoned)

    def take_unstarted(self) -> list[Claimed]:
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
        return items

    def take_results(self) -> list[R]:
        with self._cond:
            out, self._results = self._results, []
            self._wake_pending = False
        return out

    def expire(self, now: float) -> list[Claimed]:
        """Events whose handler is past its deadline: abandoned, each thread replaced."""
        expired: list[Claimed] = []
        with self._cond:
            for tid, running in list(self._running.items()):
                if now >= running.deadline and tid not in self._abandoned:
                    self._abandoned.add(tid)
                    self._retired.add(tid)
                    expired.append(running.item)
                    self._spawn()
        return expired

    def abandon_all(self) -> list[Claimed]:
        """At the end of the grace period: give up on everything still running."""
        with self._cond:
            items = [r.item for tid, r in self._running.items() if tid not in self._abandoned]
            self._abandoned.update(self._running)
        return items

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # -- the threads ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._threads += 1
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{self._threads}", daemon=True
        )
        thread.start()

    def _work(self) -> None:
        me = threading.get_ident()
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._stopping:
                    cond.wait()
                if self._stopping:
                    return
                item = self._queue.popleft()
                self._running[me] = _Running(item, time.monotonic() + self._timeout_of(item))
            result = self._run_item(item)
            with cond:
                del self._running[me]
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    if me in self._retired:
                        self._retired.discard(me)
                        return
                    continue
                self._results.append(result)
                if self._wake_pending:
                    continue
                self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._on_results)
            except RuntimeError:  # the loop is closed: the process is exiting
                return
