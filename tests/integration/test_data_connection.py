"""dispatchbox/data/connection.py against a real PostgreSQL: after the server ends the session
(pg_terminate_backend), the next get() hands out a fresh connection, set up again."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from dispatchbox.data.connection import AsyncReconnectingConnection, ReconnectingConnection


def _terminate(conn: psycopg.Connection[Any], pid: int) -> None:
    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    conn.commit()


def test_a_terminated_connection_is_reopened_and_set_up_again(
    conn: psycopg.Connection[Any], db_dsn: str
) -> None:
    setups: list[int] = []
    db = ReconnectingConnection(
        db_dsn,
        application_name="dispatchbox-test-reconnect",
        settings={"statement_timeout": "1234"},
        on_connect=lambda c: setups.append(c.info.backend_pid),
    )
    first = db.get()
    first_pid = first.info.backend_pid
    assert db.get() is first and first.autocommit and first.prepare_threshold is None
    assert first.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
    _terminate(conn, first_pid)
    with pytest.raises(psycopg.OperationalError):
        first.execute("SELECT 1")
    second = db.get()
    assert second is not first and second.info.backend_pid != first_pid
    assert second.execute("SHOW application_name").fetchone() == ("dispatchbox-test-reconnect",)
    assert setups == [first_pid, second.info.backend_pid]
    db.close()
    assert second.closed and db.conn is None


def test_the_async_twin_reopens_too(conn: psycopg.Connection[Any], db_dsn: str) -> None:
    async def run() -> tuple[int, int, str]:
        async def utc(c: psycopg.AsyncConnection[Any]) -> None:
            await c.execute("SET TimeZone TO 'UTC'")

        db = AsyncReconnectingConnection(db_dsn, application_name="t", on_connect=utc)
        first = await db.get()
        pid = first.info.backend_pid
        _terminate(conn, pid)
        with pytest.raises(psycopg.OperationalError):
            await first.execute("SELECT 1")
        second = await db.get()
        cur = await second.execute("SHOW TimeZone")
        row = await cur.fetchone()
        assert row is not None
        second_pid = second.info.backend_pid
        await db.close()
        return pid, second_pid, str(row[0])

    before, after, zone = asyncio.run(run())
    assert before != after and zone == "UTC"
