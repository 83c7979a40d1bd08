"""The archiver: moves finished rows out of the outbox, and purges the archive.

Retention model (docs/en/archival.md): a ``done`` row moves to ``outbox_event_archive``
``retention_days`` after its ``done_at``; a ``dead`` row moves ``dead_retention_days`` after its
``dead_at``, with its ``outbox_event_error`` history (into ``outbox_event_error_archive``), so
archival never loses why an event died. Purge deletes archived rows (and their archived errors)
archived more than ``purge_after_days`` ago. ``pending`` and ``running`` rows are never touched.

The work runs inside PostgreSQL, one batch per statement (``outbox_archive_batch``); this module
only loops, with the one batched loop of dispatchbox.data.batches. Each batch runs in
``conn.transaction()``: on an autocommit or idle connection that commits after every batch, so
no lock or snapshot outlives one batch and a long archival never holds back vacuum of the busy
outbox table; inside a transaction the caller already opened, the
batches become savepoints and commit with the caller. pg_cron runs the same batches through the
``run_outbox_archival`` procedure, which commits between them (dispatchbox/maintenance/cron.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import archive as data
from dispatchbox.data import partition as partition_data
from dispatchbox.data.batches import run_batches
from dispatchbox.errors import InvalidArchiveSettings, SchemaNotCurrent
from dispatchbox.events import EventStatus

logger = logging.getLogger("dispatchbox.archiver")

DEFAULT_RETENTION_DAYS = 7
DEFAULT_DEAD_RETENTION_DAYS = 30
DEFAULT_BATCH_SIZE = 10_000
DEFAULT_PAUSE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class ArchiverConfig:
    """What the archiver moves and deletes, and in what steps."""

    # Done rows whose done_at is more than this many days ago move to the archive. 0 archives
    # every done row.
    retention_days: int = DEFAULT_RETENTION_DAYS
    # Dead rows whose dead_at is more than this many days ago move to the archive with their
    # error history. Usually longer than retention_days: operators still retry and analyse dead
    # events. None leaves dead rows in the outbox.
    dead_retention_days: int | None = DEFAULT_DEAD_RETENTION_DAYS
    # Archived rows whose archived_at is more than this many days ago are deleted for good,
    # with their archived errors. None never purges.
    purge_after_days: int | None = None
    # Rows per statement (and per transaction). 10,000 keeps a batch well under a second, so
    # its row locks and its snapshot are short-lived; larger batches gain little.
    batch_size: int = DEFAULT_BATCH_SIZE
    # Seconds to sleep after each batch, outside any transaction: archival then takes turns
    # with the workers for CPU, I/O and WAL instead of running flat out beside them. 0 runs
    # the batches back to back (fastest, for a quiet outbox).
    pause_seconds: float = DEFAULT_PAUSE_SECONDS

    def __post_init__(self) -> None:
        check_days("retention_days", self.retention_days)
        if self.dead_retention_days is not None:
            check_days("dead_retention_days", self.dead_retention_days)
        if self.purge_after_days is not None:
            check_days("purge_after_days", self.purge_after_days)
        check_batch_size(self.batch_size)
        check_pause(self.pause_seconds)


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """How many events one archival run moved into the archive."""

    done_moved: int
    dead_moved: int

    @property
    def total(self) -> int:
        return self.done_moved + self.dead_moved


@dataclass(frozen=True, slots=True)
class ArchiverRun:
    """One run of the archiver service: archival, then purge (None when purge is off)."""

    archived: ArchiveResult
    purged: int | None
    seconds: float


def check_days(name: str, value: object) -> int:
    """A retention in whole days, 0 or more; InvalidArchiveSettings otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArchiveSettings(f"{name} must be a whole number of days, 0 or more: {value!r}")
    return value


def check_batch_size(value: object) -> int:
    """A batch size of 1 or more; InvalidArchiveSettings otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArchiveSettings(f"batch_size must be a whole number, 1 or more: {value!r}")
    return value


def require_schema(conn: psycopg.Connection[Any]) -> str:
    """The schema holding the archival functions; SchemaNotCurrent before migration 0002."""
    with conn.transaction():
        target = data.target(conn)
    if target["schema"] is None:
        raise SchemaNotCurrent(
            f"database '{target['database']}' lacks migration 0002_archival: "
            "run `dispatchbox db migrate`"
        )
    return str(target["schema"])


def check_pause(value: object) -> float:
    """A pause of 0 seconds or more; InvalidArchiveSettings otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidArchiveSettings(f"pause_seconds must be 0 or more: {value!r}")
    return float(value)


def _cutoff(conn: psycopg.Connection[Any], days: int) -> datetime:
    # In its own transaction block: a bare query on an idle non-autocommit connection would
    # open a transaction that turned every later batch into a savepoint of it.
    with conn.transaction():
        return data.cutoff(conn, days)


def _move(
    conn: psycopg.Connection[Any],
    status: EventStatus,
    cutoff: datetime,
    batch_size: int,
    pause: float,
) -> int:
    def committed(n: int, total: int) -> None:
        if n:
            logger.debug("archived a batch of %d %s events (%d so far)", n, status, total)

    return run_batches(
        conn,
        lambda _: data.move_batch(conn, status, cutoff, batch_size),
        committed=committed,
        pause_seconds=pause,
    )


def run_archive(
    conn: psycopg.Connection[Any],
    *,
    retention_days: int,
    dead_retention_days: int | None,
    batch_size: int,
    pause_seconds: float = 0.0,
) -> ArchiveResult:
    """Move done rows older than retention_days (by done_at) and, unless dead_retention_days is
    None, dead rows older than dead_retention_days (by dead_at) into the archive, with their
    error history, in batches of batch_size, sleeping pause_seconds after each. Safe to run
    while workers dispatch and alongside another archiver. On a partitioned outbox done rows are
    left to partition retirement. Returns the counts moved."""
    check_days("retention_days", retention_days)
    if dead_retention_days is not None:
        check_days("dead_retention_days", dead_retention_days)
    check_batch_size(batch_size)
    pause = check_pause(pause_seconds)

    done = 0
    # In its own transaction (a savepoint inside the caller's), so that on an idle connection
    # the batches below still commit one by one.
    with conn.transaction():
        partitioned = partition_data.is_partitioned(conn)
    if partitioned:
        # Done events of a partitioned outbox leave by whole partitions (`db partition
        # maintain`), which copy them into the archive themselves: moving them here as well
        # would delete row by row and insert into the archive ids it already holds.
        logger.debug("partitioned outbox: done events leave by partition retirement")
    else:
        done = _move(conn, EventStatus.DONE, _cutoff(conn, retention_days), batch_size, pause)
    dead = 0
    if dead_retention_days is not None:
        dead = _move(conn, EventStatus.DEAD, _cutoff(conn, dead_retention_days), batch_size, pause)
    if done or dead:
        logger.info("archived %d done and %d dead events", done, dead)
    return ArchiveResult(done_moved=done, dead_moved=dead)


def purge_archive(
    conn: psycopg.Connection[Any],
    *,
    older_than_days: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause_seconds: float = 0.0,
) -> int:
    """Delete archived events archived more than older_than_days ago, with their archived
    errors, in batches of batch_size (sleeping pause_seconds after each). Returns the number of
    events deleted."""
    check_days("older_than_days", older_than_days)
    check_batch_size(batch_size)
    pause = check_pause(pause_seconds)
    cutoff = _cutoff(conn, older_than_days)
    total = run_batches(
        conn, lambda _: data.purge_batch(conn, cutoff, batch_size), pause_seconds=pause
    )
    if total:
        logger.info("purged %d archived events", total)
    return total


class Archiver:
    """The archival service: one ``run_once`` per schedule tick (``dispatchbox archive run`` or a
    pg_cron job doing the same in SQL)."""

    def __init__(self, config: ArchiverConfig | None = None) -> None:
        self.config = config or ArchiverConfig()

    def run_once(self, conn: psycopg.Connection[Any]) -> ArchiverRun:
        started = time.monotonic()
        cfg = self.config
        archived = run_archive(
            conn,
            retention_days=cfg.retention_days,
            dead_retention_days=cfg.dead_retention_days,
            batch_size=cfg.batch_size,
            pause_seconds=cfg.pause_seconds,
        )
        purged = None
        if cfg.purge_after_days is not None:
            purged = purge_archive(
                conn,
                older_than_days=cfg.purge_after_days,
                batch_size=cfg.batch_size,
                pause_seconds=cfg.pause_seconds,
            )
        return ArchiverRun(archived=archived, purged=purged, seconds=time.monotonic() - started)
