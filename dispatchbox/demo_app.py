"""Handlers for `dispatchbox demo`: some succeed, some fail once, some always fail."""

from __future__ import annotations

from dispatchbox import Dispatcher, OutboxEvent, PermanentError

dispatcher = Dispatcher()


@dispatcher.handler("order.created")
def confirm_order(event: OutboxEvent) -> None:
    """Always succeeds."""


@dispatcher.handler("invoice.issued")
def send_invoice(event: OutboxEvent) -> None:
    """Fails on the first attempt (a flaky downstream), succeeds on the retry."""
    if event.attempts == 1:
        raise TimeoutError(f"mail relay timed out for invoice {event.aggregate_id}")


@dispatcher.handler("payment.captured")
async def notify_ledger(event: OutboxEvent) -> None:
    """Always fails: the ledger rejects every payment of this demo."""
    raise ConnectionRefusedError(f"ledger refused payment {event.aggregate_id} (HTTP 503)")


@dispatcher.handler("customer.deleted")
def erase_customer(event: OutboxEvent) -> None:
    """Bad payloads are permanent errors: no point retrying."""
    if "customer_id" not in event.payload:
        raise PermanentError("payload has no customer_id")
