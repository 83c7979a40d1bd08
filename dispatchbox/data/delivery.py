"""Delivery-control statements (sql/queries/delivery.sql, delivery_order.sql): circuit
breakers, rate limits, backlog limits, ordering, expiry and checksums."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]


def breaker_list(conn: Conn) -> list[Row]:
    """Every destination's circuit breaker, as stored."""
    return queries.fetch_all(conn, "breaker_list")
