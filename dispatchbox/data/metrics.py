"""The statements behind the database gauges of /metrics (sql/queries/metrics.sql,
cleanup.sql, and the breakers' one in delivery.sql), each read at scrape time."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def snapshot(conn: Conn) -> None:
    """Make the current transaction one read-only snapshot (its first statement)."""
    queries.execute(conn, "metrics_snapshot")


def dead_by_type(conn: Conn) -> list[Row]:
    """Dead events now, per (event type, aggregate type)."""
    return queries.fetch_all(conn, "metrics_dead_by_type")


def dead_by_destination(conn: Conn) -> list[Row]:
    """Dead events now, per destination."""
    return queries.fetch_all(conn, "metrics_dead_by_destination")


def dead_inflow(conn: Conn, window: float) -> list[Row]:
    """Deaths of the last ``window`` seconds per error fingerprint."""
    return queries.fetch_all(conn, "metrics_dead_inflow", {"window": window})


def redriven(conn: Conn) -> list[Row]:
    """Where redriven events ended, per state."""
    return queries.fetch_all(conn, "metrics_redriven")


def alert_state(conn: Conn) -> list[Row]:
    """Each alert's row per channel: firing or not, messages sent and failed."""
    return queries.fetch_all(conn, "metrics_alert_state")


def breakers(conn: Conn) -> list[Row]:
    """Each destination's circuit breaker and its transitions."""
    return queries.fetch_all(conn, "metrics_breakers")


def cleanup_horizon(conn: Conn) -> Row | None:
    """What holds back vacuum of the outbox (the view outbox_cleanup_horizon)."""
    return queries.fetch_one(conn, "cleanup_horizon")
