"""Handlers the benchmarks run: no-ops (one event or a batch per call), fail-once, and a latency
probe."""

from __future__ import annotations

import os
import time

from dispatchbox import Dispatcher, OutboxEvent, PermanentError

dispatcher = Dispatcher()


@dispatcher.handler("bench.noop")
def noop(event: OutboxEvent) -> None:
    """Does nothing: the benchmark measures dispatchbox, not a handler."""


@dispatcher.batch_handler("bench.noop_batch", max_batch=100)
def noop_batch(events: list[OutboxEvent]) -> None:
    """Does nothing with up to 100 events per call: the opt-in batch handler path."""


@dispatcher.handler("bench.fail_once")
def fail_once(event: OutboxEvent) -> None:
    if event.attempts == 1:
        raise RuntimeError("first attempt fails")


@dispatcher.handler("bench.die")
def die(event: OutboxEvent) -> None:
    """Fails for good at once: every event goes dead (bench/dying.py), in five error groups."""
    raise PermanentError(f"group {event.id % 5}: order {event.id} rejected")


@dispatcher.handler("bench.async_noop")
async def async_noop(event: OutboxEvent) -> None:
    """Async twin of noop."""


_probe_fd: int | None = None


@dispatcher.handler("bench.latency")
def latency(event: OutboxEvent) -> None:
    """Appends "<id> <unix time at handler start>" to $DBX_LATENCY_FILE."""
    global _probe_fd
    now = time.time()
    if _probe_fd is None:
        _probe_fd = os.open(os.environ["DBX_LATENCY_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_probe_fd, f"{event.id} {now:.6f}\n".encode())


# The ordering benchmark's app (bench/ordering.py): the same no-op, delivered in order per
# aggregate. A dispatcher of its own, so that bench.apps:dispatcher keeps the plain claim.
ordered = Dispatcher()


@ordered.handler("bench.ordered", ordering="block")
def ordered_noop(event: OutboxEvent) -> None:
    """Does nothing, one event of an aggregate at a time, in publish order."""


@dispatcher.handler("bench.downstream")
def downstream(event: OutboxEvent) -> None:
    """Fails while the file $DBX_BENCH_DOWN exists (a destination that went down)."""
    if os.path.exists(os.environ.get("DBX_BENCH_DOWN", "/nonexistent")):
        raise ConnectionError(f"downstream refused order {event.aggregate_id}")


@dispatcher.handler("bench.poison", timeout=1.0)
def poison(event: OutboxEvent) -> None:
    """Kills its own process (as an OOM kill would) when the payload says so."""
    if event.payload.get("poison"):
        os._exit(3)
