"""Statements of the partitioned outbox (sql/queries/partition.sql, migration 0013): its state,
the steps of a conversion, partitions made ahead and retired, and the pg_cron job's command."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def status(conn: Conn) -> Row | None:
    """Whether the outbox is partitioned, and the conversion's phase and settings."""
    return queries.fetch_one(conn, "partition_status")


def partitions(conn: Conn) -> list[Row]:
    """The outbox's partitions in id order, with their bounds."""
    return queries.fetch_all(conn, "partition_list")


def rebuild_key_index(conn: Conn) -> None:
    """Build the idempotency-key index without blocking writes, first dropping one that an
    interrupted build left invalid (it would stop IF NOT EXISTS). ``conn`` is in autocommit."""
    if queries.fetch_value(conn, "partition_key_index_invalid"):
        queries.execute(conn, "partition_drop_invalid_key_index")
    queries.execute(conn, "partition_create_key_index")


def try_convert_lock(conn: Conn) -> bool:
    """Take the one-conversion-at-a-time session lock if it is free; False when another
    session holds it."""
    return bool(queries.fetch_value(conn, "partition_convert_lock"))


def convert_unlock(conn: Conn) -> None:
    """Release the conversion's session lock."""
    queries.execute(conn, "partition_convert_unlock")


def set_lock_timeout(conn: Conn, ms: int) -> None:
    """How long this transaction's DDL waits for a lock before it fails."""
    queries.execute(conn, "partition_set_lock_timeout", {"ms": str(ms)})


def track_keys(conn: Conn) -> None:
    """Step 0: keyed inserts into the single table record their keys from now on."""
    queries.fetch_value(conn, "partition_track_keys")


def prepare(conn: Conn, partition_size: int, headroom: int) -> int:
    """Step 1: the partitioned table beside the populated one; the first partitioned id."""
    params = {"partition_size": partition_size, "headroom": headroom}
    return int(queries.fetch_value(conn, "partition_prepare", params))


def validate_bound(conn: Conn) -> None:
    """Step 2: prove id < first bound on the populated table, without blocking writers."""
    queries.execute(conn, "partition_validate_bound")


def swap(conn: Conn) -> int:
    """Step 3: the populated table becomes the first partition; the first partitioned id."""
    return int(queries.fetch_value(conn, "partition_swap"))


def finish(conn: Conn) -> int:
    """Step 4: validate the re-created foreign keys; how many were validated."""
    return int(queries.fetch_value(conn, "partition_finish"))


def create_ahead(conn: Conn, spare: int) -> int:
    """Partitions ahead of the id sequence; how many were created."""
    return int(queries.fetch_value(conn, "partition_create_ahead", {"spare": spare}))


def retire(conn: Conn, retention_days: int, lock_timeout_ms: int) -> int:
    """Retire partitions holding only done events older than the retention; how many."""
    params = {"retention_days": retention_days, "lock_timeout_ms": lock_timeout_ms}
    return int(queries.fetch_value(conn, "partition_retire", params))


def is_partitioned(conn: Conn) -> bool:
    """True when outbox_event is the partitioned table (false before migration 0013 too)."""
    return bool(queries.fetch_value(conn, "partition_outbox_is_partitioned"))


def job_command(conn: Conn, schema: str, retention_days: int) -> str:
    """The statement the pg_cron partition job runs, quoted by the server."""
    params = {"schema": schema, "retention_days": retention_days}
    return str(queries.fetch_value(conn, "partition_job_command", params))
