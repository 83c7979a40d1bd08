"""Handlers for the redrive tests, run in real `dispatchbox worker` processes.

``redrive.flaky`` fails while the downstream is "down" and succeeds once the file
``$DBX_RECORD_DIR/healthy`` exists; while ``newerror`` exists it fails with another error.
Every call appends ``<ok|fail> <id> <attempts> <pid>`` to a per-process file (O_APPEND, so
lines survive the process), which the tests compare with the database.
"""

from __future__ import annotations

import os

from dispatchbox import Dispatcher, OutboxEvent

dispatcher = Dispatcher()


def _record(kind: str, event: OutboxEvent) -> None:
    directory = os.environ["DBX_RECORD_DIR"]
    line = f"{kind} {event.id} {event.attempts} {os.getpid()}\n"
    fd = os.open(
        os.path.join(directory, f"calls-{os.getpid()}.log"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dispatcher.handler("redrive.flaky")
def flaky(event: OutboxEvent) -> None:
    if os.path.exists(os.path.join(os.environ["DBX_RECORD_DIR"], "newerror")):
        _record("fail", event)
        raise ValueError(f"schema mismatch in order {event.aggregate_id}")
    if os.path.exists(os.path.join(os.environ["DBX_RECORD_DIR"], "healthy")):
        _record("ok", event)
        return
    _record("fail", event)
    raise ConnectionError(f"downstream refused order {event.aggregate_id}")
