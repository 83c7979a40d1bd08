"""`dispatchbox publish`: write one event from the command line (operators, scripts)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer

from dispatchbox.cli.common import connection, usage_error
from dispatchbox.publish import publish


def _parse_json(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        usage_error(f"{flag} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def publish_command(
    ctx: typer.Context,
    aggregate_type: str = typer.Option(..., "--aggregate-type", help="e.g. order"),
    aggregate_id: str = typer.Option(..., "--aggregate-id", help="e.g. 42"),
    event_type: str = typer.Option(..., "--event-type", help="e.g. order.created"),
    payload: str = typer.Option(..., "--payload", help="The payload as JSON."),
    headers: str | None = typer.Option(None, "--headers", help="Headers as a JSON object."),
    idempotency_key: str | None = typer.Option(
        None,
        "--idempotency-key",
        help="Publish at most once per key: a second publish with it prints the first event's id.",
    ),
    priority: int = typer.Option(5, "--priority", min=1, max=10, help="1 most urgent, 10 least."),
    max_attempts: int = typer.Option(
        5, "--max-attempts", min=1, help="Attempts before the event is marked dead."
    ),
    available_at: datetime | None = typer.Option(
        None, "--available-at", help="ISO 8601; not delivered before then.", formats=None
    ),
) -> None:
    """Publish one event in its own transaction and print its id."""
    body = _parse_json("--payload", payload)
    head = _parse_json("--headers", headers) if headers is not None else None
    if head is not None and not isinstance(head, dict):
        usage_error("--headers must be a JSON object")
    if available_at is not None and available_at.tzinfo is None:
        available_at = available_at.astimezone()
    with connection(ctx) as conn:
        event_id = publish(
            conn,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            event_type=event_type,
            payload=body,
            headers=head,
            idempotency_key=idempotency_key,
            priority=priority,
            max_attempts=max_attempts,
            available_at=available_at,
        )
    print(event_id)
