"""Handlers with delivery controls (ordering, ttl) that the ordering tests run in real worker
processes. Each call appends "<phase> <id> <aggregate_id> <attempts> <pid> <unix time>" to a
per-process file in $DBX_RECORD_DIR (O_APPEND: lines survive a kill)."""

from __future__ import annotations

import asyncio
import os
import time

from dispatchbox import BatchFailure, Dispatcher, OutboxEvent, PermanentError

dispatcher = Dispatcher()


def note(phase: str, event: OutboxEvent) -> None:
    line = (
        f"{phase} {event.id} {event.aggregate_id} {event.attempts} {os.getpid()} "
        f"{time.time():.6f}\n"
    )
    path = os.path.join(os.environ["DBX_RECORD_DIR"], f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _work(event: OutboxEvent) -> None:
    """Take a little time (so overlapping calls would show), fail as the payload asks."""
    note("start", event)
    try:
        time.sleep(float(event.payload.get("sleep", 0.002)))
        if event.attempts <= int(event.payload.get("fail_times", 0)):
            raise ConnectionError(f"downstream refused {event.aggregate_id}")
        flag = event.payload.get("poison_while")
        if flag and os.path.exists(flag):
            raise PermanentError(f"poison event of {event.aggregate_id}")
    except Exception:
        note("fail", event)
        raise
    note("end", event)


@dispatcher.handler("ord.block", ordering="block")
def ordered_block(event: OutboxEvent) -> None:
    _work(event)


@dispatcher.handler("ord.skip", ordering="skip")
def ordered_skip(event: OutboxEvent) -> None:
    _work(event)


@dispatcher.handler("ord.park", ordering="park")
def ordered_park(event: OutboxEvent) -> None:
    _work(event)


@dispatcher.handler("ord.async", ordering="block")
async def ordered_async(event: OutboxEvent) -> None:
    await asyncio.to_thread(_work, event)


@dispatcher.batch_handler("ord.batch", ordering="block", max_batch=20)
def ordered_batch(events: list[OutboxEvent]) -> None:
    failures: dict[int, BaseException] = {}
    for event in events:
        try:
            _work(event)
        except Exception as exc:
            failures[event.id] = exc
    if failures:
        raise BatchFailure(failures)


@dispatcher.handler("plain.ok")
def plain(event: OutboxEvent) -> None:
    _work(event)


@dispatcher.handler("ttl.short", ttl=0.5)
def short_lived(event: OutboxEvent) -> None:
    _work(event)


@dispatcher.handler("exp.slow")
def slow_then_expired(event: OutboxEvent) -> None:
    _work(event)
