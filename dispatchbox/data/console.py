"""The operator console's statements (sql/queries/console.sql): the overview's states and
chart, error groups with their examples and destinations, capped counts, an event's audit
trail, and a payload edited before a redrive."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def read_snapshot(conn: Conn) -> None:
    """Make the current transaction one read-only snapshot (its first statement)."""
    queries.execute(conn, "console_snapshot")


def deaths_over_time(conn: Conn, hours: int) -> list[Row]:
    """Deaths per bucket over the last ``hours`` hours (bucket, count)."""
    return queries.fetch_all(conn, "console_deaths_over_time", {"hours": hours})


def error_groups(conn: Conn, flt: DeadEventFilter) -> list[Row]:
    """Matching dead events per (fingerprint, event type): count, first and last death, an
    example id. From the dead-letter summary (migration 0012) when it serves the filter."""
    name = "console_error_groups_summary" if flt.summary_serves else "console_error_groups"
    return queries.fetch_all(conn, name, flt.params())


def errors_of(conn: Conn, ids: list[int]) -> dict[int, str]:
    """The last error of each of these events."""
    return {
        r["id"]: r["last_error"] for r in queries.fetch_all(conn, "console_errors_of", {"ids": ids})
    }


def group_destinations(
    conn: Conn, flt: DeadEventFilter, fingerprints: list[str], per_group: int
) -> list[Row]:
    """Where the matching events of these groups died: exact from the dead-letter summary when
    it serves the filter, else sampling ``per_group`` per group."""
    params = {**flt.params(), "fingerprints": fingerprints, "per_group": per_group}
    name = "console_group_destinations" + ("_summary" if flt.summary_serves else "")
    return queries.fetch_all(conn, name, params)


def dead_count_capped(conn: Conn, flt: DeadEventFilter, cap: int) -> int:
    """How many dead events match, counting no further than cap + 1."""
    params = {**flt.params(), "cap": cap}
    return int(queries.fetch_value(conn, "console_dead_count_capped", params))


def event_audit(conn: Conn, event_id: int, limit: int) -> list[Row]:
    """The latest audited actions that named this event, newest first."""
    return queries.fetch_all(conn, "console_event_audit", {"id": event_id, "limit": limit})


def payload_replace(conn: Conn, event_id: int, payload_json: str) -> Row | None:
    """Replace a dead event's payload (and its checksum); the payload before, or None when the
    event is missing or not dead."""
    params = {"id": event_id, "payload": payload_json}
    return queries.fetch_one(conn, "console_payload_replace", params)
