"""Least-privilege roles and row-level security: what `db migrate`, `db grant` and `db rls` do.

Three NOLOGIN roles (dispatchbox_worker, dispatchbox_operator, dispatchbox_reader); what each
may touch is listed once, in sql/grants.sql. Scopes (which aggregate types a role may see when
row-level security is on) live in the table dispatchbox_role_scope (migration 0010).
Imports only queries and psycopg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from dispatchbox.data import admin as data

ROLES = ("dispatchbox_worker", "dispatchbox_operator", "dispatchbox_reader")


def grant_statements() -> list[str]:
    """sql/grants.sql, one statement an item (every statement ends a line with ';')."""
    text = (data.sql_dir() / "grants.sql").read_text(encoding="utf-8")
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(stripped)
        if stripped.endswith(";"):
            statements.append(" ".join(current).rstrip(";"))
            current = []
    return statements


def may_create_roles(conn: psycopg.Connection[Any]) -> bool:
    return data.may_create_roles(conn)


def grant(conn: psycopg.Connection[Any], *, echo: Callable[[str], None] | None = None) -> list[str]:
    """Create the missing roles (NOLOGIN) and apply sql/grants.sql; idempotent. Returns (and
    passes to ``echo`` as it goes) every statement run. Needs CREATEROLE for a missing role, and
    ownership of the tables for the grants."""
    done: list[str] = []

    def run(statement: sql.Composable | str) -> None:
        text = statement.as_string(conn) if isinstance(statement, sql.Composable) else statement
        if echo is not None:
            echo(text + ";")
        with conn.cursor() as cur:
            cur.execute(text.encode())
        done.append(text)

    with conn.transaction():
        for role in ROLES:
            if not data.role_exists(conn, role):
                # Roles are cluster-wide: a migrate of another database may create it first.
                with contextlib.suppress(psycopg.errors.DuplicateObject), conn.transaction():
                    run(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        for statement in grant_statements():
            run(statement)
    return done


def grant_if_allowed(conn: psycopg.Connection[Any]) -> bool:
    """What `db migrate` does: grant when the roles exist or this session may create them;
    False (nothing done) otherwise, and `dispatchbox db grant` is for a DBA to run."""
    if roles_missing(conn) and not may_create_roles(conn):
        return False
    grant(conn)
    return True


def roles_missing(conn: psycopg.Connection[Any]) -> list[str]:
    return [r for r in ROLES if not data.role_exists(conn, r)]


def set_rls(conn: psycopg.Connection[Any], *, enabled: bool) -> None:
    with conn.transaction():
        data.set_rls(conn, enabled=enabled)


def rls_status(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    return {r["table_name"]: r["enabled"] for r in data.rls_status(conn)}


def scope_add(conn: psycopg.Connection[Any], role: str, aggregate_types: list[str]) -> int:
    added = 0
    with conn.transaction():
        for aggregate_type in aggregate_types:
            added += data.scope_add(conn, role, aggregate_type)
    return added


def scope_remove(conn: psycopg.Connection[Any], role: str, aggregate_types: list[str]) -> int:
    removed = 0
    with conn.transaction():
        for aggregate_type in aggregate_types:
            removed += data.scope_remove(conn, role, aggregate_type)
    return removed


def scopes(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return data.scopes(conn)
