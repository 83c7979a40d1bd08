"""Handlers the worker tests run in real worker processes.

Each call appends one line to a per-process file in $DBX_RECORD_DIR ("<kind> <id> <attempts>
<pid> <unix time>"), written with O_APPEND so lines survive a kill -9 of the process.
"""

from __future__ import annotations

import asyncio
import os
import time

from dispatchbox import BatchFailure, Dispatcher, OutboxEvent, PermanentError

dispatcher = Dispatcher()


def record(kind: str, event: OutboxEvent) -> None:
    directory = os.environ["DBX_RECORD_DIR"]
    line = f"{kind} {event.id} {event.attempts} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(
        os.path.join(directory, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dispatcher.handler("test.ok")
def ok(event: OutboxEvent) -> None:
    record("call", event)


@dispatcher.handler("test.async_ok")
async def async_ok(event: OutboxEvent) -> None:
    await asyncio.sleep(0)
    record("call", event)


@dispatcher.handler("test.fail_twice")
def fail_twice(event: OutboxEvent) -> None:
    record("call", event)
    if event.attempts <= 2:
        raise ConnectionError(f"downstream refused order {event.aggregate_id}")


@dispatcher.handler("test.always_fail")
def always_fail(event: OutboxEvent) -> None:
    record("call", event)
    raise RuntimeError(f"cannot deliver order {event.aggregate_id}")


@dispatcher.handler("test.permanent")
async def permanent(event: OutboxEvent) -> None:
    record("call", event)
    raise PermanentError("payload is missing the customer")


def _first_call(event: OutboxEvent) -> bool:
    """True the first time any process calls a handler for this event (a marker file)."""
    marker = os.path.join(os.environ["DBX_RECORD_DIR"], f"called-{event.id}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dispatcher.handler("test.slow")
def slow(event: OutboxEvent) -> None:
    """Sleeps payload["seconds"]; only on the first call when payload["first_only"] (the first
    call, not attempt 1: an attempt lost to a crash is given back, so attempt 1 comes again)."""
    first = _first_call(event)
    record("start", event)
    if first or not event.payload.get("first_only"):
        time.sleep(float(event.payload["seconds"]))
    record("end", event)


@dispatcher.handler("test.async_slow")
async def async_slow(event: OutboxEvent) -> None:
    """Async twin of test.slow."""
    first = _first_call(event)
    record("start", event)
    if first or not event.payload.get("first_only"):
        await asyncio.sleep(float(event.payload["seconds"]))
    record("end", event)


@dispatcher.handler("test.chaos")
def chaos(event: OutboxEvent) -> None:
    """Sleeps payload["seconds"] between its start and end lines: the fault tests read from them
    which executions of one event could have overlapped."""
    record("start", event)
    time.sleep(float(event.payload["seconds"]))
    record("end", event)


@dispatcher.handler("test.poison", timeout=1.0)
def poison(event: OutboxEvent) -> None:
    """Misbehaves as payload["kind"] says: raise, hang, exit the process, or fail with a
    100 KB message holding bytes that are not UTF-8; anything else succeeds."""
    record("call", event)
    kind = event.payload.get("kind")
    if kind == "raise":
        raise ValueError(f"cannot parse order {event.aggregate_id}")
    if kind == "hang":
        time.sleep(30)
    if kind == "exit":
        os._exit(3)
    if kind == "bytes":
        garbage = b"\xff\xfe upstream said: \xc3\x28 "
        raise RuntimeError(garbage.decode("utf-8", "surrogateescape") + "x" * 100_000)


@dispatcher.handler("test.own_timeout")
async def own_timeout(event: OutboxEvent) -> None:
    """A handler's own TimeoutError is its error, not the worker's handler timeout."""
    record("call", event)
    raise TimeoutError("upstream read timed out")


@dispatcher.handler("test.async_sleep", timeout=0.5)
async def async_sleep(event: OutboxEvent) -> None:
    record("start", event)
    await asyncio.sleep(5)


@dispatcher.handler("test.nul_error")
def nul_error(event: OutboxEvent) -> None:
    record("call", event)
    raise ValueError("bad byte \x00 in upstream reply")


# -- batch handlers: a "batch" line per call (its id field is the batch's size) ------------------


def record_batch(events: list[OutboxEvent]) -> None:
    record("batch", OutboxEvent(len(events), "", "", "", {}, attempts=0))


@dispatcher.batch_handler("test.batch_ok", max_batch=50)
def batch_ok(events: list[OutboxEvent]) -> None:
    record_batch(events)
    for event in events:
        record("call", event)


@dispatcher.batch_handler("test.async_batch_ok", max_batch=50)
async def async_batch_ok(events: list[OutboxEvent]) -> None:
    await asyncio.sleep(0)
    record_batch(events)
    for event in events:
        record("call", event)


@dispatcher.batch_handler("test.batch_mixed")
def batch_mixed(events: list[OutboxEvent]) -> None:
    """payload {"fail": true}: a retryable error; {"permanent": true}: dead at once; else done."""
    failures: dict[int, BaseException] = {}
    for event in events:
        record("call", event)
        if event.payload.get("fail"):
            failures[event.id] = RuntimeError(f"broker refused order {event.aggregate_id}")
        elif event.payload.get("permanent"):
            failures[event.id] = PermanentError("no route for this order")
    if failures:
        raise BatchFailure(failures)


@dispatcher.batch_handler("test.batch_fail_first")
async def batch_fail_first(events: list[OutboxEvent]) -> None:
    for event in events:
        record("call", event)
    if any(event.attempts == 1 for event in events):
        raise ConnectionError("broker is down")


@dispatcher.batch_handler("test.batch_slow", max_batch=10, timeout=0.5)
def batch_slow(events: list[OutboxEvent]) -> None:
    for event in events:
        record("start", event)
    time.sleep(3)


@dispatcher.batch_handler("test.async_batch_slow", max_batch=10, timeout=0.5)
async def async_batch_slow(events: list[OutboxEvent]) -> None:
    for event in events:
        record("start", event)
    await asyncio.sleep(3)


@dispatcher.batch_handler("test.batch_sleep", max_batch=5)
def batch_sleep(events: list[OutboxEvent]) -> None:
    for event in events:
        record("start", event)
    time.sleep(float(events[0].payload["seconds"]))
    for event in events:
        record("end", event)


@dispatcher.batch_handler("test.batch_permanent")
def batch_permanent(events: list[OutboxEvent]) -> None:
    """payload {"unknown": true}: names an id outside the batch (ignored, all done); else every
    event of the batch is dead-lettered by one PermanentError."""
    for event in events:
        record("call", event)
    if events[0].payload.get("unknown"):
        raise BatchFailure({-1: RuntimeError("not one of ours")})
    raise PermanentError("the broker rejects this schema")
