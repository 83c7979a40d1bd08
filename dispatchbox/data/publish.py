"""Publish statements (sql/queries/publish.sql): one event, many events, and the COPY fast
path's ids and statement."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def insert_one(conn: Conn, params: dict[str, Any]) -> int | None:
    """Insert one event; its id, or None when its idempotency key is already taken."""
    new_id = queries.fetch_value(conn, "publish_one", params)
    return None if new_id is None else int(new_id)


def existing_id(conn: Conn, idempotency_key: str | None) -> int:
    """The id of the event that holds this idempotency key."""
    return int(queries.fetch_value(conn, "publish_existing", {"idempotency_key": idempotency_key}))


def insert_many(conn: Conn, params: dict[str, Any]) -> list[Row]:
    """Insert a batch (one array per column); a row (inserted, new_id) per event, in order."""
    return queries.fetch_all(conn, "publish_many", params)


def existing_ids(conn: Conn, keys: list[str]) -> dict[str, int]:
    """The id of the event holding each of these idempotency keys."""
    rows = queries.fetch_all(conn, "publish_existing_many", {"keys": keys})
    return {row["idempotency_key"]: int(row["id"]) for row in rows}


def reserve_ids(conn: Conn, n: int) -> list[int]:
    """Draw ``n`` ids from the outbox's sequence (for the COPY fast path)."""
    return [int(row["id"]) for row in queries.fetch_all(conn, "publish_reserve_ids", {"n": n})]


def copy_statement() -> bytes:
    """The COPY statement of the fast path, for ``cursor.copy``."""
    return queries.copy_statement("publish_copy")
