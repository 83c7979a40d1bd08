"""Schema migrations: sql/migrations/NNNN_name.sql, applied in order, each once, each atomic."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from dispatchbox import roles
from dispatchbox.data import admin as data
from dispatchbox.errors import MigrationError, SchemaNotCurrent

logger = logging.getLogger("dispatchbox.migrations")
# Seconds a migration waits for a table lock before it gives up (and is rolled back).
DEFAULT_LOCK_TIMEOUT = 10.0

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[AppliedMigration]
    pending: list[Migration]
    unknown: list[AppliedMigration]  # in the database, but not shipped with this version

    @property
    def current(self) -> bool:
        return not self.pending


def available(directory: Path | None = None) -> list[Migration]:
    """Migrations shipped with this version, checked for numbering without gaps or duplicates."""
    directory = directory or data.sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"badly named migration file {path.name} (want NNNN_name.sql)")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration numbering broken at {migration.path.name}: expected {expected:04d}"
            )
    return found


def _applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    if not data.version_table_exists(conn):
        return []
    return [
        AppliedMigration(row["version"], row["name"], row["applied_at"])
        for row in data.applied_migrations(conn)
    ]


def status(conn: psycopg.Connection[Any]) -> MigrationStatus:
    applied = _applied(conn)
    conn.rollback()  # leave no transaction open on the caller's connection
    done = {a.version for a in applied}
    shipped = available()
    known = {m.version for m in shipped}
    return MigrationStatus(
        applied=applied,
        pending=[m for m in shipped if m.version not in done],
        unknown=[a for a in applied if a.version not in known],
    )


def check(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaNotCurrent naming the missing versions, if any."""
    missing = status(conn).pending
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise SchemaNotCurrent(f"database schema is not current; missing migrations: {names}")


def migrate(
    conn: psycopg.Connection[Any],
    *,
    dry_run: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    target: int | None = None,
) -> list[Migration]:
    """Apply every pending migration (up to ``target`` when given); return what was (or, with
    dry_run, would be) applied.

    The connection must be in autocommit mode: the advisory lock is held by the session across
    the per-migration transactions, so two `migrate` runs at the same moment apply each migration
    once. A migration waits at most ``lock_timeout`` seconds for each table lock it needs: a lock
    request queued behind a long transaction would otherwise stop every worker queued behind it.
    Past that it fails, is rolled back, and can be run again.
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode")
    shipped = [m for m in available() if target is None or m.version <= target]
    data.migrations_lock(conn)
    try:
        if dry_run:
            done = {a.version for a in _applied(conn)}
            return [m for m in shipped if m.version not in done]
        data.create_version_table(conn)
        done = {a.version for a in _applied(conn)}
        applied: list[Migration] = []
        for migration in shipped:
            if migration.version in done:
                continue
            try:
                started = time.perf_counter()
                with conn.transaction():
                    data.set_local_lock_timeout(conn, lock_timeout)
                    data.run_script(conn, migration.sql())
                    data.record_migration(conn, migration.version, migration.name)
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.path.name} failed and was rolled back: "
                    f"{' '.join(str(exc).split())}"
                ) from None
            applied.append(migration)
            # Its locks were held at most this long: the transaction's whole life.
            logger.info(
                "migration_applied name=%s seconds=%.3f",
                migration.path.name,
                time.perf_counter() - started,
            )
        if target is not None and target < len(available()):
            return applied  # the grants name tables of later migrations
        # After every run, not only when a migration ran: a grants.sql line added by a new
        # version reaches databases that were already current.
        try:
            roles.grant_if_allowed(conn)
        except psycopg.Error as exc:
            raise MigrationError(
                f"migrations applied, but granting the dispatchbox roles failed: "
                f"{' '.join(str(exc).split())} (run `dispatchbox db grant` as the tables' owner)"
            ) from None
        return applied
    finally:
        data.migrations_unlock(conn)
