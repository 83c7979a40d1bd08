"""The operator audit trail of dead-letter actions (sql/queries/audit.sql).

A one-statement action inserts its row, completed, in the transaction that did the work; a
multi-batch action inserts an ``in_progress`` row in its first batch's transaction, adds every
later batch's count in that batch's transaction, and is finished at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]


def _insert_params(
    *,
    actor: str,
    action: str,
    affected: int,
    event_ids: Sequence[int] | None,
    filter: DeadEventFilter | None,
    outcome: str,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "actor": actor,
        "action": action,
        "event_ids": list(event_ids) if event_ids is not None else None,
        "filter": json.dumps(filter.to_json()) if filter is not None else None,
        "affected": affected,
        "outcome": outcome,
        "details": json.dumps(details or {}, default=str),
    }


def insert(
    conn: Conn,
    *,
    actor: str,
    action: str,
    affected: int,
    event_ids: Sequence[int] | None = None,
    filter: DeadEventFilter | None = None,
    outcome: str = "completed",
    details: dict[str, Any] | None = None,
) -> int:
    """Record an action; return its row's id. ``outcome="in_progress"`` starts a multi-batch
    action that ``progress`` and ``finish`` complete."""
    params = _insert_params(
        actor=actor,
        action=action,
        affected=affected,
        event_ids=event_ids,
        filter=filter,
        outcome=outcome,
        details=details,
    )
    return int(queries.fetch_value(conn, "audit_insert", params))


async def ainsert(
    conn: AsyncConn,
    *,
    actor: str,
    action: str,
    affected: int,
    event_ids: Sequence[int] | None = None,
    filter: DeadEventFilter | None = None,
    outcome: str = "completed",
    details: dict[str, Any] | None = None,
) -> int:
    """``insert`` on an async connection."""
    params = _insert_params(
        actor=actor,
        action=action,
        affected=affected,
        event_ids=event_ids,
        filter=filter,
        outcome=outcome,
        details=details,
    )
    row = await queries.afetch_one(conn, "audit_insert", params)
    assert row is not None  # INSERT ... RETURNING returns its row
    return int(row["id"])


def progress(conn: Conn, audit_id: int, affected: int) -> None:
    """Add one committed batch's count to a multi-batch action."""
    queries.execute(conn, "audit_progress", {"id": audit_id, "affected": affected})


async def aprogress(conn: AsyncConn, audit_id: int, affected: int) -> None:
    await queries.aexecute(conn, "audit_progress", {"id": audit_id, "affected": affected})


def finish(conn: Conn, audit_id: int, outcome: str) -> None:
    """Close a multi-batch action: ``completed``, or ``interrupted`` with what it did so far."""
    queries.execute(conn, "audit_finish", {"id": audit_id, "outcome": outcome})


async def afinish(conn: AsyncConn, audit_id: int, outcome: str) -> None:
    await queries.aexecute(conn, "audit_finish", {"id": audit_id, "outcome": outcome})


def history(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """The latest actions, newest first."""
    return queries.fetch_all(conn, "audit_history", {"limit": limit})
