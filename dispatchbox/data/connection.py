"""The one self-reconnecting connection, for the long-lived services that keep a connection
between rounds (the alert evaluator, the metrics collector) and, in its async form, for the
worker's connections.

``get()`` returns the open connection, or opens a new one when there is none or the last one
closed or broke in an outage: a service that catches the outage's error simply calls ``get()``
again on its next round. Connections are autocommit; statements are not prepared unless asked
(PgBouncer in transaction mode, and plans made with each call's values). ``on_connect`` runs on
each new connection before it is handed out (a session setting, say).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from dispatchbox import db

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]


def _options(settings: dict[str, str] | None) -> dict[str, str]:
    if not settings:
        return {}
    return {"options": " ".join(f"-c {name}={value}" for name, value in settings.items())}


class ReconnectingConnection:
    """A connection that reopens itself after an outage."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        connect_timeout: int = 10,
        prepare: bool = False,
        settings: dict[str, str] | None = None,
        on_connect: Callable[[Conn], None] | None = None,
    ) -> None:
        self.dsn = dsn
        # How the connection shows in pg_stat_activity.
        self.application_name = application_name
        # Seconds a connection attempt may take before DatabaseUnreachable.
        self.connect_timeout = connect_timeout
        # Whether psycopg may prepare repeated statements (False: never).
        self.prepare = prepare
        # Session settings passed at startup (-c name=value); PgBouncer refuses most of them.
        self.settings = settings
        self.on_connect = on_connect
        self.conn: Conn | None = None

    def get(self) -> Conn:
        """The open connection, reopened when it closed or broke (DatabaseUnreachable when the
        database cannot be reached)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            conn = db.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=self.application_name,
                **_options(self.settings),
            )
            if not self.prepare:
                conn.prepare_threshold = None
            if self.on_connect is not None:
                self.on_connect(conn)
            self.conn = conn
        return self.conn

    def close(self) -> None:
        """Close the connection, if any; the next ``get()`` opens a new one."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class AsyncReconnectingConnection:
    """The async twin of ReconnectingConnection."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        connect_timeout: int = 10,
        prepare: bool = False,
        settings: dict[str, str] | None = None,
        on_connect: Callable[[AsyncConn], Awaitable[None]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.prepare = prepare
        self.settings = settings
        self.on_connect = on_connect
        self.conn: AsyncConn | None = None

    async def get(self) -> AsyncConn:
        """The open connection, reopened when it closed or broke."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            await self.close()
            conn = await db.connect_async(
                self.dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=self.application_name,
                **_options(self.settings),
            )
            if not self.prepare:
                conn.prepare_threshold = None
            if self.on_connect is not None:
                await self.on_connect(conn)
            self.conn = conn
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


@contextlib.contextmanager
def unprepared(
    dsn: str | None, pool: ConnectionPool[Any] | None
) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection that never prepares (units of work use conn.transaction()):
    a new one to ``dsn``, closed after, or one of ``pool``, given back as it was lent."""
    if pool is None:
        assert dsn is not None
        conn = db.connect(dsn, autocommit=True, prepare_threshold=None)
        try:
            yield conn
        finally:
            conn.close()
        return
    with pool.connection() as conn:
        saved = (conn.autocommit, conn.prepare_threshold)
        conn.autocommit = True
        conn.prepare_threshold = None
        try:
            yield conn
        finally:
            conn.prepare_threshold = saved[1]
            if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                conn.autocommit = saved[0]
