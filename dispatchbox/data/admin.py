"""Schema administration (sql/queries/migrations.sql, security.sql): migrations, the
dispatchbox roles, row-level security and aggregate-type scopes, and the sql/ folder itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def sql_dir() -> Path:
    """The sql/ folder: schema.sql, grants.sql, migrations/, queries/, fragments/."""
    return queries.sql_dir()


def run_script(conn: Conn, text: str) -> None:
    """Run a whole SQL file (a migration, the schema): several statements, no parameters."""
    queries.execute_script(conn, text)


# -- migrations --------------------------------------------------------------------------------


def migrations_lock(conn: Conn) -> None:
    """Take the session's advisory lock that serialises migration runs (waits for it)."""
    queries.fetch_value(conn, "migrations_lock")


def migrations_unlock(conn: Conn) -> None:
    queries.fetch_value(conn, "migrations_unlock")


def create_version_table(conn: Conn) -> None:
    queries.execute(conn, "migrations_create_version_table")


def version_table_exists(conn: Conn) -> bool:
    return bool(queries.fetch_value(conn, "migrations_version_table_exists"))


def applied_migrations(conn: Conn) -> list[Row]:
    """(version, name, applied_at) of every applied migration, in version order."""
    return queries.fetch_all(conn, "migrations_applied")


def record_migration(conn: Conn, version: int, name: str) -> None:
    queries.execute(conn, "migrations_record", {"version": version, "name": name})


def set_local_lock_timeout(conn: Conn, seconds: float) -> None:
    """Wait at most ``seconds`` for each lock until the transaction ends."""
    queries.fetch_value(conn, "migrations_lock_timeout", {"ms": f"{int(seconds * 1000)}ms"})


# -- roles and security ------------------------------------------------------------------------


def may_create_roles(conn: Conn) -> bool:
    return bool(queries.fetch_value(conn, "roles_may_create"))


def role_exists(conn: Conn, role: str) -> bool:
    return bool(queries.fetch_value(conn, "role_exists", {"role": role}))


def set_rls(conn: Conn, *, enabled: bool) -> None:
    """Enable (or disable) row-level security on the outbox tables."""
    queries.execute(conn, "rls_enable" if enabled else "rls_disable")


def rls_status(conn: Conn) -> list[Row]:
    """(table_name, enabled) per outbox table."""
    return queries.fetch_all(conn, "rls_status")


def scope_add(conn: Conn, role: str, aggregate_type: str) -> int:
    """Let ``role`` see ``aggregate_type``; 1 when added, 0 when it already could."""
    return queries.execute(conn, "scope_add", {"role": role, "aggregate_type": aggregate_type})


def scope_remove(conn: Conn, role: str, aggregate_type: str) -> int:
    params = {"role": role, "aggregate_type": aggregate_type}
    return queries.execute(conn, "scope_remove", params)


def scopes(conn: Conn) -> list[Row]:
    return queries.fetch_all(conn, "scope_list")
