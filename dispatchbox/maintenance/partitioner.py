"""The partitioned outbox (opt-in): conversion of a populated ``outbox_event``, partitions
created ahead of the id sequence, and retirement of old partitions.

The work is in SQL (migration 0013, named queries in sql/queries/partition.sql); this module runs
the steps in order on an autocommit connection and measures them. Conversion
(docs/en/scaling.md "A partitioned outbox"):

1. ``CREATE INDEX CONCURRENTLY`` of the idempotency-key look-up index (no blocking lock), and
   ``outbox_partition_track_keys``: a trigger that records the keys of events published from
   now on (a brief lock).
2. ``outbox_partition_prepare``: the partitioned table beside the populated one, and a
   ``NOT VALID`` check ``id < first bound`` on the populated table (a brief lock).
3. ``VALIDATE CONSTRAINT`` of that check: a scan under SHARE UPDATE EXCLUSIVE, which does not
   block the workers.
4. ``outbox_partition_swap``: the only exclusive step, catalog changes only; the populated table
   becomes partition ``outbox_event_p0``.
5. ``outbox_partition_finish``: validate the re-created foreign keys (no blocking).

The locking steps wait at most ``lock_timeout_ms`` for their lock and are tried again after a
short pause: a waiting ACCESS EXCLUSIVE request queues every later worker statement behind it,
so a long wait would stop the workers even before the lock is held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg

from dispatchbox import db
from dispatchbox.data import partition as data
from dispatchbox.errors import PartitionError, SchemaNotCurrent

logger = logging.getLogger("dispatchbox.partitioner")
T = TypeVar("T")

DEFAULT_PARTITION_SIZE = 1_000_000
DEFAULT_LOCK_TIMEOUT_MS = 200
DEFAULT_ATTEMPTS = 50
DEFAULT_SPARE = 2
# Pause between two tries of a step whose lock was busy: lets the queue behind it drain.
_RETRY_PAUSE_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class ConversionReport:
    """What a conversion did and how long each step took (seconds, as the client saw them)."""

    first_bound: int
    index_seconds: float
    prepare_seconds: float
    validate_seconds: float
    # The exclusive step: from the start of the transaction that got the lock to its commit.
    swap_seconds: float
    # Tries of the lock steps (1 each when no lock was ever busy).
    prepare_attempts: int
    swap_attempts: int
    finish_seconds: float
    foreign_keys_validated: int


@dataclass(frozen=True, slots=True)
class MaintainRun:
    created: int
    retired: int


def status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Whether the outbox is partitioned, the conversion's phase and its settings."""
    try:
        with conn.transaction():
            row = data.status(conn)
    except psycopg.errors.UndefinedFunction:
        raise SchemaNotCurrent(
            "this database lacks migration 0013_partitioned_outbox: run `dispatchbox db migrate`"
        ) from None
    assert row is not None
    return row


def partitions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.transaction():
        return data.partitions(conn)


def _with_lock_retries(
    conn: psycopg.Connection[Any],
    name: str,
    step: Callable[[psycopg.Connection[Any]], T],
    *,
    lock_timeout_ms: int,
    attempts: int,
) -> tuple[T, int, float]:
    """Run one step (``name`` for messages) in its own transaction under lock_timeout; try
    again while its lock is busy. Returns (its value, tries, seconds of the successful try)."""
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            with conn.transaction():
                data.set_lock_timeout(conn, lock_timeout_ms)
                value = step(conn)
            return value, attempt, time.perf_counter() - started
        except psycopg.errors.LockNotAvailable:
            logger.info("%s: lock busy (try %d of %d)", name, attempt, attempts)
            time.sleep(_RETRY_PAUSE_SECONDS)
    raise PartitionError(
        f"{name}: the outbox's lock stayed busy for {attempts} tries of "
        f"{lock_timeout_ms} ms; run again when no long transaction holds outbox_event"
    )


def convert(
    conn: psycopg.Connection[Any],
    *,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    headroom: int | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_ATTEMPTS,
) -> ConversionReport:
    """Convert the populated outbox into a partitioned one while workers run. ``conn`` must be
    in autocommit mode (CREATE INDEX CONCURRENTLY). ``headroom``: ids publishers may draw
    between prepare and swap (default one partition)."""
    if not conn.autocommit:
        raise PartitionError("conversion needs an autocommit connection")
    if partition_size < 1000:
        raise PartitionError(f"partition size must be at least 1000, not {partition_size}")
    if not data.try_convert_lock(conn):
        raise PartitionError(
            "another `dispatchbox db partition convert` is running on this database; "
            "let it finish (`dispatchbox db partition status` shows its phase)"
        )
    try:
        return _convert(
            conn, partition_size=partition_size, headroom=headroom,
            lock_timeout_ms=lock_timeout_ms, attempts=attempts,
        )  # fmt: skip
    finally:
        # A lost session has released its locks already; an unlock that fails must not hide
        # the error that ended the conversion (the lock ends with the session anyway).
        try:
            if not conn.closed:
                data.convert_unlock(conn)
        except psycopg.Error as exc:
            logger.warning("could not release the conversion lock: %s", db.redact(str(exc)))


def _convert(
    conn: psycopg.Connection[Any],
    *,
    partition_size: int,
    headroom: int | None,
    lock_timeout_ms: int,
    attempts: int,
) -> ConversionReport:
    st = status(conn)
    if st["partitioned"]:
        raise PartitionError("outbox_event is already partitioned")

    started = time.perf_counter()
    if st["phase"] is None:
        # An index left invalid by an interrupted build would block the IF NOT EXISTS below.
        data.rebuild_key_index(conn)
    index_seconds = time.perf_counter() - started

    prepare_seconds, prepare_attempts = 0.0, 0
    if st["phase"] is None:
        _with_lock_retries(
            conn, "track_keys", data.track_keys, lock_timeout_ms=lock_timeout_ms, attempts=attempts
        )
        try:
            _, prepare_attempts, prepare_seconds = _with_lock_retries(
                conn,
                "prepare",
                partial(
                    data.prepare, partition_size=partition_size, headroom=headroom or partition_size
                ),
                lock_timeout_ms=lock_timeout_ms,
                attempts=attempts,
            )
        except psycopg.errors.FeatureNotSupported as exc:
            raise PartitionError(exc.diag.message_primary or str(exc)) from None
    logger.info("prepared in %.3f s", prepare_seconds)

    started = time.perf_counter()
    data.validate_bound(conn)
    validate_seconds = time.perf_counter() - started

    try:
        first_bound, swap_attempts, swap_seconds = _with_lock_retries(
            conn, "swap", data.swap, lock_timeout_ms=lock_timeout_ms, attempts=attempts
        )
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise PartitionError(
            f"{exc.diag.message_primary}: prepare again with a larger --headroom"
        ) from None
    logger.info("swapped in %.3f s after %d tries", swap_seconds, swap_attempts)

    started = time.perf_counter()
    fks = data.finish(conn)
    finish_seconds = time.perf_counter() - started
    return ConversionReport(
        first_bound=int(first_bound),
        index_seconds=index_seconds,
        prepare_seconds=prepare_seconds,
        validate_seconds=validate_seconds,
        swap_seconds=swap_seconds,
        prepare_attempts=prepare_attempts,
        swap_attempts=swap_attempts,
        finish_seconds=finish_seconds,
        foreign_keys_validated=fks,
    )


def maintain(
    conn: psycopg.Connection[Any],
    *,
    retention_days: int,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    spare: int = DEFAULT_SPARE,
) -> MaintainRun:
    """Create partitions ahead, then retire the old ones (what the pg_cron job runs). ``conn``
    must be in autocommit mode: retirement commits between its steps."""
    if not conn.autocommit:
        raise PartitionError("partition maintenance needs an autocommit connection")
    if retention_days < 0 or spare < 1 or lock_timeout_ms < 1:
        raise PartitionError("retention must be 0 days or more, spare and lock timeout 1 or more")
    if not status(conn)["partitioned"]:
        raise PartitionError(
            "outbox_event is not partitioned: run `dispatchbox db partition convert`"
        )
    with conn.transaction():
        created = data.create_ahead(conn, spare)
    retired = data.retire(conn, retention_days, lock_timeout_ms)
    if created or retired:
        logger.info("partitions: %d created, %d retired", created, retired)
    return MaintainRun(created=created, retired=retired)
