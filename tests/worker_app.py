"""Handlers the worker tests run in real worker processes.

Each call appends one line to a per-process file in $DBX_RECORD_DIR ("<kind> <id> <attempts>
<pid> <unix time>"), written with O_APPEND so lines survive a kill -9 of the process.
"""

from __future__ import annotations

import asyncio
import os
import time

from dispatchbox import Dispatcher, OutboxEvent, PermanentError

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


@dispatcher.handler("test.slow")
def slow(event: OutboxEvent) -> None:
    """Sleeps payload["seconds"]; only on the first attempt when payload["first_only"]."""
    record("start", event)
    if event.attempts == 1 or not event.payload.get("first_only"):
        time.sleep(float(event.payload["seconds"]))
    record("end", event)


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
