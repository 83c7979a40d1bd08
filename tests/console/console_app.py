"""Handlers the console's browser tests run in a real `dispatchbox worker` process.

``console.order`` needs ``customer`` in its payload (the tests fix a bad payload in the console);
``console.flaky`` fails until the file ``$DBX_RECORD_DIR/healthy`` exists (the tests retry its
group once it does). Every successful call appends ``ok <id> <customer>`` to a per-process file.
"""

from __future__ import annotations

import os

from dispatchbox import Dispatcher, OutboxEvent

dispatcher = Dispatcher()


def _record(event: OutboxEvent) -> None:
    path = os.path.join(os.environ["DBX_RECORD_DIR"], f"ok-{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"ok {event.id} {event.payload.get('customer')}\n".encode())
    finally:
        os.close(fd)


@dispatcher.handler("console.order")
def order(event: OutboxEvent) -> None:
    if "customer" not in event.payload:
        raise KeyError("customer")
    _record(event)


@dispatcher.handler("console.flaky")
def flaky(event: OutboxEvent) -> None:
    if not os.path.exists(os.path.join(os.environ["DBX_RECORD_DIR"], "healthy")):
        raise ConnectionError(f"payments.example.com refused order {event.aggregate_id}")
    _record(event)
