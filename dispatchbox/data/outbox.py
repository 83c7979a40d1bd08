"""Reads of the outbox as a whole (sql/queries/status.sql, testing.sql, and the
console's snapshot and rates): bounded status counts, and its events for tests."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def status_bounded(conn: Conn, caps: dict[str, Any]) -> Row:
    """Each state's count, stopping at its cap (a cap of 0 skips the count)."""
    return queries.fetch_one(conn, "status_bounded", caps) or {}


def status_estimates(conn: Conn) -> list[Row]:
    """The planner's estimate per state, and the rows changed since the last ANALYZE."""
    return queries.fetch_all(conn, "status_estimates")


def read_snapshot(conn: Conn) -> None:
    """Make the current transaction one read-only snapshot (the console's and the monitor's)."""
    queries.execute(conn, "console_snapshot")


def rates(conn: Conn, window: float) -> Row:
    """Events a second published and completed over the last ``window`` seconds."""
    row = queries.fetch_one(conn, "console_rates", {"window": window})
    assert row is not None  # aggregates without GROUP BY
    return row


def events(conn: Conn, *, event_type: str | None, status: str | None) -> list[Row]:
    """The events in the outbox, in id order (dispatchbox.testing)."""
    params = {"event_type": event_type, "status": status}
    return queries.fetch_all(conn, "testing_events", params)
