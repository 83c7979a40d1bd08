"""SyncPool: run sync handlers in a fixed set of threads with as little hand-off as possible.

A per-event hand-off (executor.submit, then a loop wake-up per result) costs more than a no-op
handler by far, and with the GIL the threads convoy behind the event loop and each other: ten
threads taking one event at a time from a shared queue spent ~20 us of CPU per event on lock and
GIL hand-offs alone (one thread: 1.6 us). So:

- A thread takes a share of the queue at once (its "held" events, at most CHUNK), when the
  queue is long enough that the others get theirs too; it starts them one after another.
- A thread that finds the queue empty steals half of the longest held share, so no event waits
  behind a slow handler while a thread is idle.
- Starting and finishing an event take no lock: who settles a run (its thread, or the watchdog
  that gave up on it) is decided by an atomic list.pop() on the run's ticket, and results go
  into a deque that only the loop pops. One loop callback wakes the loop for however many
  results piled up since the last one.

Timeouts: a thread cannot be interrupted. The loop's watchdog marks an event whose handler ran
past its deadline as timed out (a failed attempt), ignores whatever the handler returns later,
puts the stuck thread's held events back on the queue, and starts a replacement thread so that
the pool keeps its size.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")  # what a thread runs: an event, or a batch of events
R = TypeVar("R")


# A run: (event, monotonic start, ticket). The ticket holds one element until the run is
# settled, by its thread (a result) or by the watchdog (timeout, shutdown): whoever pops it
# first. A plain tuple: one is made per event, and a class instance costs several times more.
_Running = tuple[Any, float, list[None]]  # (T | None, start, ticket)

# A thread between taking an event from its share and starting it: busy, nothing to abandon.
_STARTING: _Running = (None, float("inf"), [])


CHUNK = 16  # most events a thread takes at once


class SyncPool(Generic[T, R]):
    def __init__(
        self,
        size: int,
        *,
        run_item: Callable[[T], R],
        timeout_of: Callable[[T], float],
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
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[T] = deque()
        # Taken by a thread, not started yet. The owner pops from the left and thieves from the
        # right, each without the lock: deque pops are atomic, so every event goes to one taker.
        self._held: dict[int, deque[T]] = {}
        self._running: dict[int, _Running] = {}  # thread id -> what it runs
        # Thread ids that exit once their current run returns (the watchdog gave up on it and
        # started a replacement).
        self._retired: set[int] = set()
        self._results: deque[R] = deque()
        self._wake_pending = False
        self._stopping = False
        self._threads = 0
        for _ in range(size):
            self._spawn()

    # -- called from the event loop --------------------------------------------------------

    def submit(self, items: list[T]) -> None:
        with self._cond:
            self._queue.extend(items)
            self._cond.notify(min(len(items), self.size))

    def queued(self) -> int:
        """Events not started yet: in the queue or held by a thread."""
        return len(self._queue) + sum(map(len, list(self._held.values())))

    def busy(self) -> int:
        """Handlers running whose outcome still counts (abandoned ones were already settled)."""
        return sum(1 for r in list(self._running.values()) if r is _STARTING or r[2])

    def take_unstarted(self) -> list[T]:
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
            for held in self._held.values():
                items += _drain(held)
        return items

    def take_results(self) -> list[R]:
        # Reset first: a result appended after this point finds the flag down and wakes the
        # loop again; one appended before it is in the deque now.
        self._wake_pending = False
        results = self._results
        return [results.popleft() for _ in range(len(results))]

    def expire(self, now: float) -> list[T]:
        """Events whose handler is past its deadline: abandoned, each thread replaced."""
        expired: list[T] = []
        with self._cond:
            for tid, (item, started, ticket) in list(self._running.items()):
                # The deadline is worked out here, ten times a second for at most `size` runs,
                # rather than by the thread for every event it starts.
                if item is None or now < started + self._timeout_of(item):
                    continue
                if not _take_ticket(ticket):
                    continue  # it finished just now
                self._retired.add(tid)
                expired.append(item)
                held = self._held.pop(tid, None)
                if held:  # what it took but never started goes to the other threads
                    self._queue.extendleft(reversed(_drain(held)))
                    self._cond.notify(self.size)
                self._spawn()
        return expired

    def abandon_all(self) -> list[T]:
        """At the end of the grace period: give up on everything still running."""
        return [
            item
            for item, _, ticket in list(self._running.values())
            if item is not None and _take_ticket(ticket)
        ]

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

    def _take(self, me: int, held: deque[T]) -> bool:
        """Under the lock: fill `held` from the queue or from the longest other share; False
        when stopping."""
        while not self._stopping:
            queue = self._queue
            if queue:
                n = min(CHUNK, max(1, len(queue) // (2 * self.size)))
                held.extend([queue.popleft() for _ in range(n)])
                if n > 1 and not queue:
                    self._cond.notify(self.size)  # idle threads may steal some of it
                return True
            victim = max(self._held.values(), key=len, default=None)
            if victim is not None and victim is not held:
                # Its owner pops from the other end without the lock: either may empty it.
                for _ in range((len(victim) + 1) // 2):
                    try:
                        held.appendleft(victim.pop())
                    except IndexError:
                        break
                if held:
                    return True
            self._cond.wait()
        return False

    def _work(self) -> None:
        me = threading.get_ident()
        cond = self._cond
        running = self._running
        results = self._results
        held: deque[T] = deque()
        with cond:
            self._held[me] = held
        while not self._stopping:
            running[me] = _STARTING
            try:
                item = held.popleft()
            except IndexError:
                del running[me]
                with cond:
                    if self._take(me, held):
                        continue
                    self._held.pop(me, None)
                    return
            ticket: list[None] = [None]
            running[me] = (item, time.monotonic(), ticket)
            result = self._run_item(item)
            # Still busy until the result is in the deque: shutdown must not see this thread
            # idle, collect, and flush in the moment between the handler's return and here.
            running[me] = _STARTING
            if not _take_ticket(ticket):  # the watchdog settled it: timed out, or shutdown gave up
                del running[me]
                with cond:  # the watchdog decides under the lock whether this thread retires
                    retired = me in self._retired
                    self._retired.discard(me)
                if retired:
                    return
                continue
            results.append(result)
            if self._wake_pending:
                continue
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._on_results)
            except RuntimeError:  # the loop is closed: the process is exiting
                running.pop(me, None)
                return
        running.pop(me, None)


def _take_ticket(ticket: list[None]) -> bool:
    """True for the one caller (the thread, or the watchdog giving up) that takes a run's one
    ticket and so decides how it ended (list.pop is atomic)."""
    try:
        ticket.pop()
    except IndexError:
        return False
    return True


def _drain(held: deque[T]) -> list[T]:
    """Everything left in a held share, racing its owner's popleft without losing or
    duplicating an event."""
    out: list[T] = []
    while True:
        try:
            out.append(held.popleft())
        except IndexError:
            return out
