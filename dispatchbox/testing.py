"""pytest fixtures for testing your publishers and handlers against a real PostgreSQL.

Enable them in your ``conftest.py``::

    pytest_plugins = ["dispatchbox.testing"]

The server is ``DISPATCHBOX_TEST_DSN`` when it is set (a role that may create and drop
databases), otherwise a throwaway cluster started once per session from the local PostgreSQL
server binaries (``initdb``, ``pg_ctl``; see ``dispatchbox.tempcluster``). A test that asks for
``outbox_dsn`` or ``outbox_conn`` gets a database of its own with every dispatchbox migration
applied, cloned from a template migrated once, and dropped after the test.

``published_events`` reads what your code wrote to the outbox; ``run_handlers`` calls your
``Dispatcher``'s handlers with those events in this process, sync or async, as a worker would
call them, so a handler's own effects can be asserted without starting a worker.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from dispatchbox import migrations
from dispatchbox.data import outbox
from dispatchbox.dispatcher import Dispatcher
from dispatchbox.events import OutboxEvent
from dispatchbox.tempcluster import TempCluster

TEST_DSN_ENV = "DISPATCHBOX_TEST_DSN"
_TEMPLATE_PREFIX = "dispatchbox_testing_template_"


@dataclass
class OutboxServer:
    """A PostgreSQL server whose admin connection may create and drop databases."""

    admin_dsn: str
    template: str
    cluster: TempCluster | None = None

    def dsn(self, dbname: str) -> str:
        """The admin DSN pointed at another database of the same server."""
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self) -> str:
        """A new database cloned from the migrated template; returns its name."""
        name = f"outbox_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            # Identifiers cannot be query parameters: composed with psycopg.sql, never f-strings.
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def close(self) -> None:
        """Drop the template; stop the throwaway cluster when this session started one."""
        try:
            self.drop_database(self.template)
        finally:
            if self.cluster is not None:
                self.cluster.stop()


def start_server(admin_dsn: str | None = None) -> OutboxServer:
    """Connect to ``admin_dsn`` (default: ``$DISPATCHBOX_TEST_DSN``), or start a throwaway
    cluster, and build a template database with every dispatchbox migration applied."""
    dsn = admin_dsn if admin_dsn is not None else os.environ.get(TEST_DSN_ENV) or None
    cluster = None
    if dsn is None:
        cluster = TempCluster().start()
        dsn = cluster.dsn("postgres")
    # One template per session (and per xdist worker), so parallel sessions never share one.
    server = OutboxServer(dsn, f"{_TEMPLATE_PREFIX}{uuid.uuid4().hex[:8]}", cluster)
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.template)))
        with psycopg.connect(server.dsn(server.template), autocommit=True) as conn:
            migrations.migrate(conn)
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    return server


def published_events(
    conn: psycopg.Connection[Any], *, event_type: str | None = None, status: str | None = None
) -> list[OutboxEvent]:
    """The events in the outbox, in id order, as a handler would receive them.

    Reads through ``conn``, so inside your transaction it also sees what you have not committed.
    """
    rows = outbox.events(conn, event_type=event_type, status=status)
    return [OutboxEvent(**row) for row in rows]


def run_handlers(dispatcher: Dispatcher, events: Sequence[OutboxEvent]) -> None:
    """Call the handler registered for each event, in order, in this process.

    Async handlers run to completion on a fresh event loop; a batch handler gets the events of its
    type in one call (in chunks of its ``max_batch``). Exceptions propagate unchanged, so
    ``pytest.raises(PermanentError)`` works. No timeout, retry or outcome is applied: that is the
    worker's part, tested by dispatchbox itself.
    """
    pending: dict[str, list[OutboxEvent]] = {}
    for event in events:
        spec = dispatcher.get(event.event_type)
        if spec is None:
            raise LookupError(f"no handler registered for event type {event.event_type!r}")
        if spec.max_batch is None:
            _call(spec.func, event)
        else:
            pending.setdefault(event.event_type, []).append(event)
    for event_type, batch in pending.items():
        spec = dispatcher.get(event_type)
        assert spec is not None and spec.max_batch is not None
        for start in range(0, len(batch), spec.max_batch):
            _call(spec.func, batch[start : start + spec.max_batch])


def _call(func: Any, argument: Any) -> None:
    result = func(argument)
    if inspect.isawaitable(result):
        asyncio.run(_awaited(result))


async def _awaited(awaitable: Any) -> None:
    await awaitable


# -- the fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dispatchbox_server() -> Iterator[OutboxServer]:
    """The session's PostgreSQL server, with a migrated template database."""
    server = start_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def outbox_dsn(dispatchbox_server: OutboxServer) -> Iterator[str]:
    """The DSN of a fresh database with every dispatchbox migration applied."""
    name = dispatchbox_server.create_database()
    try:
        yield dispatchbox_server.dsn(name)
    finally:
        dispatchbox_server.drop_database(name)


@pytest.fixture
def outbox_conn(outbox_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection (not autocommit) to the test's database, closed afterwards."""
    with psycopg.connect(outbox_dsn) as conn:
        yield conn
