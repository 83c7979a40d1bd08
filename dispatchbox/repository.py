"""OutboxRepository: dead-letter reads, redrive, export, purge and the audit trail.

The CLI and the HTTP API are clients of this class; the SQL lives in sql/queries/dead_letters.sql
and sql/queries/audit.sql. Rules it keeps:

* Every state change names the state it expects (``WHERE status = 'dead'``), so a worker never
  sees a row change under it, and an event that is not dead is never touched.
* Set-based work (redrive by filter, purge) runs in PostgreSQL in bounded batches, each batch its
  own transaction: an interrupted run keeps what it committed, and running it again continues
  where it stopped (a redriven event is no longer dead, so nothing is redriven twice).
* Every operator action that changes or exports dead events writes one audit row, in the same
  transaction as the change: a failed action records nothing, and a multi-batch action's count
  is exactly what its committed batches did (see sql/queries/audit.sql).
* Queries run unprepared, so PostgreSQL plans each filter with its actual values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
from psycopg_pool import ConnectionPool

from dispatchbox import repository_bulk, repository_reads, repository_redrive
from dispatchbox.data import audit
from dispatchbox.data import dead_letters as data
from dispatchbox.data.connection import unprepared
from dispatchbox.errors import InvalidFilter
from dispatchbox.export import ExportFormat
from dispatchbox.filters import DeadEventFilter
from dispatchbox.maintenance import archiver
from dispatchbox.records import (
    AuditEntry,
    DeadEvent,
    DeadEventStats,
    EventDetail,
    RedriveCounts,
    default_actor,
)
from dispatchbox.repository_redrive import check_positive as _check_positive
from dispatchbox.repository_redrive import valid_id as _valid_id

if TYPE_CHECKING:
    from dispatchbox.redrive import RedriveService

logger = logging.getLogger("dispatchbox.repository")

# Rows per statement for set-based work: big enough to amortise a round trip, small enough that
# one batch's locks and WAL stay short.
BATCH_SIZE = 5000
# cleanup_old_dead_events archives dead events older than this by default (seed 004).
DEFAULT_CLEANUP_DAYS = 30
GROUPINGS = data.GROUPINGS
MAX_PAGE = 10_000
# The reads' individual filter keywords, in their positional order (OutboxRepository._filter).
_KEYWORDS = (
    "aggregate_type",
    "event_type",
    "since",
    "until",
    "error_contains",
    "error_fingerprint",
)

Progress = Callable[[int], None]


class OutboxRepository:
    """Dead-letter operations over a DSN (a connection per call) or a psycopg_pool pool."""

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool[Any] | None = None,
        *,
        dsn: str | None = None,
        pool: ConnectionPool[Any] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        """``OutboxRepository(dsn="postgresql://...")``, ``OutboxRepository(pool=pool)``, or
        either one positionally (``OutboxRepository(dsn_or_pool)``, as DESIGN.md names it)."""
        _check_positive("batch_size", batch_size)
        given = [x for x in (dsn_or_pool, dsn, pool) if x is not None]
        if len(given) != 1:
            raise TypeError("OutboxRepository takes exactly one of a DSN (dsn=) or a pool (pool=)")
        target = given[0]
        self._pool: ConnectionPool[Any] | None = None
        self._dsn: str | None = None
        if isinstance(target, ConnectionPool) and dsn is None:
            self._pool = target
        elif isinstance(target, str) and pool is None:
            self._dsn = target
        else:
            raise TypeError("OutboxRepository takes a DSN string or a psycopg_pool.ConnectionPool")
        self.batch_size = batch_size

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """An autocommit connection that never prepares: units of work use conn.transaction()."""
        return unprepared(self._dsn, self._pool)

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """An autocommit, unprepared connection for the services built on this repository
        (dispatchbox.redrive): the same pool or DSN."""
        return self._connection()

    def redrive(self) -> RedriveService:
        """Canary and paced redrives, dry-run plans and operations (dispatchbox.redrive)."""
        from dispatchbox.redrive import RedriveService

        return RedriveService(self.connection)

    @staticmethod
    def _filter(filter: DeadEventFilter | None, *keywords: Any) -> DeadEventFilter:
        """The one DeadEventFilter passed down to the data layer: ``filter`` itself, or one
        built from the reads' individual keywords (aggregate_type, event_type, since, until,
        error_contains, error_fingerprint, in that order)."""
        given = {k: v for k, v in zip(_KEYWORDS, keywords, strict=False) if v is not None}
        if filter is None:
            return DeadEventFilter(**given)
        if not isinstance(filter, DeadEventFilter):
            raise TypeError("filter must be a DeadEventFilter")
        if given:
            raise TypeError("pass either filter= or individual filter arguments, not both")
        return filter

    # -- reads ---------------------------------------------------------------------------------

    def fetch_dead_events(
        self,
        limit: int = 100,
        offset: int = 0,
        aggregate_type: str | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        *,
        until: datetime | None = None,
        error_contains: str | None = None,
        error_fingerprint: str | None = None,
        after_id: int | None = None,
        filter: DeadEventFilter | None = None,
    ) -> list[DeadEvent]:
        """A page of dead events in id order; ``after_id`` gives keyset pages (no OFFSET scan)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise InvalidFilter(f"limit must be an integer between 1 and {MAX_PAGE}")
        _check_positive("offset", offset, allow_zero=True)
        _check_positive("after_id", after_id, allow_zero=True)
        flt = self._filter(
            filter, aggregate_type, event_type, since, until, error_contains, error_fingerprint
        )
        with self._connection() as conn:
            rows = data.page(conn, flt, limit=limit, offset=offset, after_id=after_id)
        return [DeadEvent(**row) for row in rows]

    def count_dead_events(
        self,
        aggregate_type: str | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        *,
        until: datetime | None = None,
        error_contains: str | None = None,
        error_fingerprint: str | None = None,
        filter: DeadEventFilter | None = None,
    ) -> int:
        """How many dead events match."""
        flt = self._filter(
            filter, aggregate_type, event_type, since, until, error_contains, error_fingerprint
        )
        with self._connection() as conn:
            return data.count(conn, flt)

    def dead_event_stats(
        self,
        aggregate_type: str | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        *,
        until: datetime | None = None,
        error_contains: str | None = None,
        error_fingerprint: str | None = None,
        filter: DeadEventFilter | None = None,
        by: Iterable[str] = GROUPINGS,
    ) -> DeadEventStats:
        """Totals, oldest and newest death, and counts by event type, aggregate type and error.

        ``by`` picks the groupings (each is one scan of a million rows at most, so ask only for
        what is shown). Totals come from the first grouping, all read from one snapshot.
        """
        wanted = list(dict.fromkeys(by))
        unknown = [b for b in wanted if b not in GROUPINGS]
        if unknown:
            raise InvalidFilter(f"unknown grouping {unknown[0]!r} (choose {', '.join(GROUPINGS)})")
        flt = self._filter(
            filter, aggregate_type, event_type, since, until, error_contains, error_fingerprint
        )
        with self._connection() as conn:
            return repository_reads.stats(conn, flt, wanted)

    def get_event(self, event_id: int) -> EventDetail | None:
        """One event in any state with its error history, or None when there is no such id."""
        if not _valid_id(event_id):
            return None
        with self._connection() as conn:
            return repository_reads.event_detail(conn, event_id)

    def history(self, limit: int = 50) -> list[AuditEntry]:
        """The latest audited actions on dead events, newest first."""
        _check_positive("limit", limit)
        with self._connection() as conn:
            rows = audit.history(conn, limit)
        return [AuditEntry(**row) for row in rows]

    # -- redrive -------------------------------------------------------------------------------

    def retry_dead_event(self, event_id: int, *, actor: str | None = None) -> bool:
        """Send one dead event back to pending. False when there is no such event; EventNotDead
        (a ValueError) when it exists but is not dead."""
        if not _valid_id(event_id):
            return False
        with self._connection() as conn:
            return repository_redrive.retry_one(conn, event_id, actor=actor or default_actor())

    def classify_ids(self, ids: Iterable[int]) -> tuple[list[int], list[int], list[int]]:
        """Split ids into (dead, missing, not dead) without changing anything (for --dry-run)."""
        with self._connection() as conn:
            return repository_redrive.classify(conn, ids)

    def retry_dead_events_batch(
        self,
        event_ids: Iterable[int] | None = None,
        *,
        ids: Iterable[int] | None = None,
        actor: str | None = None,
        skip_invalid: bool = False,
    ) -> int:
        """Redrive these dead events in one transaction; return how many were redriven.

        ``event_ids`` (or positionally; ``ids=`` is the older keyword and still accepted). Any id
        that is missing or not dead fails the whole batch with InvalidEventIds naming them, and
        nothing is retried; with ``skip_invalid`` the others are retried.
        """
        if (event_ids is None) == (ids is None):
            raise TypeError("retry_dead_events_batch takes event_ids (or ids=), exactly once")
        wanted = repository_redrive.checked_ids(event_ids if event_ids is not None else ids)
        if not wanted:
            return 0
        who = actor or default_actor()
        with self._connection() as conn:
            return repository_redrive.retry_batch(
                conn, wanted, actor=who, skip_invalid=skip_invalid
            )

    def retry_dead_events(
        self,
        filter: DeadEventFilter | None = None,
        limit: int | None = None,
        *,
        actor: str | None = None,
        rate: float | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Redrive every dead event that matches (at most ``limit``); return how many.

        ``redrive_dead_events`` with the same arguments, returning only ``processed``.
        """
        return self.redrive_dead_events(
            filter, limit, actor=actor, rate=rate, progress=progress
        ).processed

    def redrive_dead_events(
        self,
        filter: DeadEventFilter | None = None,
        limit: int | None = None,
        *,
        actor: str | None = None,
        rate: float | None = None,
        progress: Progress | None = None,
    ) -> RedriveCounts:
        """Redrive every dead event that matches (at most ``limit``), in batches.

        Each batch is its own transaction (``redrive_plain_batch``), taking the next dead
        events in id order and never letting an aggregate's later event overtake an earlier one
        that another transaction held (those aggregates are skipped for the rest of the run).
        ``rate`` caps events made pending per second (batches shrink to at most ``rate`` and are
        paced), so a recovering downstream is not flooded. Interrupted (Ctrl-C,
        an error), it keeps the batches already committed, records the action as interrupted
        with their count, and re-raises; run it again to continue.
        """
        flt = self._filter(filter)
        _check_positive("limit", limit)
        if rate is not None and (isinstance(rate, bool) or not rate > 0):
            raise InvalidFilter(f"rate must be a positive number of events per second, not {rate}")
        with self._connection() as conn:
            return repository_redrive.redrive_by_filter(
                conn,
                flt,
                actor=actor or default_actor(),
                batch_size=self.batch_size,
                limit=limit,
                rate=rate,
                progress=progress,
            )

    # -- export --------------------------------------------------------------------------------

    def export_dead_events(
        self,
        out: TextIO,
        format: str | ExportFormat,
        filter: DeadEventFilter | None = None,
        *,
        actor: str | None = None,
        destination: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Stream matching dead events to ``out`` as json, jsonl or csv; return how many.

        Rows come from a server-side cursor a chunk at a time, so memory stays flat whatever the
        count; the next chunk is fetched while the last one is written. The audit row is written
        in the export's transaction after the last row: an export that fails records nothing.
        """
        fmt = format if isinstance(format, ExportFormat) else ExportFormat.parse(format)
        flt = self._filter(filter)
        with self._connection() as conn:
            return repository_bulk.export(
                conn,
                out,
                fmt,
                flt,
                actor=actor or default_actor(),
                destination=destination,
                progress=progress,
            )

    # -- purge: the CLI's verb, which archives ---------------------------------------------------

    def cleanup_old_dead_events(
        self,
        older_than_days: int = DEFAULT_CLEANUP_DAYS,
        *,
        filter: DeadEventFilter | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Archive (not delete) dead events whose ``dead_at`` is before now() minus
        ``older_than_days`` days (default 30), as the database's clock reads it when the call
        starts; return how many moved. They stay readable in outbox_event_archive until the
        archive's own purge removes them.

        Goes through archival, never a bare DELETE: each batch is migration 0002's
        ``outbox_archive_batch('dead', cutoff, batch_size)``, which moves the events and their
        error history into outbox_event_archive and outbox_event_error_archive in one statement.
        With a non-empty ``filter`` only the matching dead events move (query
        ``dead_archive_batch``, the same move narrowed by the filter); archived events can no
        longer be retried, so an operator purges one error group without touching the others.
        Each batch is its own transaction, with the audit row (action ``purge``) kept up to date.
        """
        _check_positive("older_than_days", older_than_days, allow_zero=True)
        flt = self._filter(filter)
        with self._connection() as conn:
            archiver.require_schema(conn)
            return repository_bulk.purge(
                conn,
                flt,
                older_than_days,
                actor=actor or default_actor(),
                batch_size=self.batch_size,
                progress=progress,
            )

    def count_archivable(
        self, older_than_days: int, *, filter: DeadEventFilter | None = None
    ) -> int:
        """How many dead events ``dead-events purge --older-than-days N`` (and the filter) would
        move to the archive."""
        _check_positive("older_than_days", older_than_days, allow_zero=True)
        flt = self._filter(filter)
        with self._connection() as conn:
            return repository_bulk.count_archivable(conn, flt, older_than_days)

    # -- archival ------------------------------------------------------------------------------

    def archive(
        self,
        *,
        retention_days: int = archiver.DEFAULT_RETENTION_DAYS,
        dead_retention_days: int | None = archiver.DEFAULT_DEAD_RETENTION_DAYS,
        batch_size: int = archiver.DEFAULT_BATCH_SIZE,
    ) -> int:
        """Run archival now (dispatchbox.maintenance.archiver.run_archive): done rows older than
        ``retention_days``, dead rows older than ``dead_retention_days`` (None: none), with their
        error history, into the archive. Returns how many events moved."""
        with self._connection() as conn:
            result = archiver.run_archive(
                conn,
                retention_days=retention_days,
                dead_retention_days=dead_retention_days,
                batch_size=batch_size,
            )
        return result.total
