"""Login roles for the security tests: each granted one dispatchbox role, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import conninfo, sql

from tests.pg import PgServer


@contextmanager
def login_role(server: PgServer, db_dsn: str, granted: str) -> Iterator[str]:
    """A new LOGIN role that is a member of ``granted`` only; yields a DSN that logs in as it."""
    name = f"login_{granted.removeprefix('dispatchbox_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name))
        )
    try:
        yield conninfo.make_conninfo(db_dsn, user=name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            with psycopg.connect(db_dsn, autocommit=True) as owner:
                owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def denied(dsn: str, statement: str) -> bool:
    """True when PostgreSQL refuses the statement for lack of privilege."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False
