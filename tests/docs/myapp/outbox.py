"""The Dispatcher `myapp.outbox:dispatcher` of the docs' examples (docs/*/worker.md)."""

from __future__ import annotations

import time

from dispatchbox import Dispatcher, OutboxEvent

dispatcher = Dispatcher()


@dispatcher.handler("order.created")
def order_created(event: OutboxEvent) -> None:
    """Does nothing: the examples only start and check the worker."""


@dispatcher.handler("stuck.sync", timeout=50)
def stuck(event: OutboxEvent) -> None:
    """A slow handler with its own timeout, longer than a short lease."""
    time.sleep(45)
