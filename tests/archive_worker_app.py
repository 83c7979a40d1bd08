"""Handlers for the archival-under-load test: one that succeeds, one that always fails."""

from __future__ import annotations

from dispatchbox import Dispatcher, OutboxEvent

dispatcher = Dispatcher()


@dispatcher.handler("archive.ok")
def ok(event: OutboxEvent) -> None:
    """Delivers nothing, at once."""


@dispatcher.handler("archive.fail")
def fail(event: OutboxEvent) -> None:
    raise RuntimeError(f"cannot deliver order {event.aggregate_id}")
