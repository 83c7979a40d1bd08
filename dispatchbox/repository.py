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

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from dispatchbox import db, queries
from dispatchbox.delivery import checksum
from dispatchbox.errors import EventNotDead, InvalidEventIds, InvalidFilter
from dispatchbox.export import ExportFormat, Writer
from dispatchbox.filters import DeadEventFilter
from dispatchbox.maintenance import archiver
from dispatchbox.records import (
    AuditEntry,
    DeadEvent,
    DeadEventStats,
    ErrorGroup,
    ErrorRecord,
    EventDetail,
    GroupStat,
    RedriveCounts,
    default_actor,
)

if TYPE_CHECKING:
    from dispatchbox.redrive import RedriveService

logger = logging.getLogger("dispatchbox.repository")

# Rows per statement for set-based work: big enough to amortise a round trip, small enough that
# one batch's locks and WAL stay short.
BATCH_SIZE = 5000
# cleanup_old_dead_events archives dead events older than this by default (seed 004).
DEFAULT_CLEANUP_DAYS = 30
GROUPINGS = ("event_type", "aggregate_type", "destination", "error")
MAX_PAGE = 10_000
# Export chunks fetched ahead of the writer (each is one FETCH, 5,000 rows).
_PREFETCH = 2
_MAX_BIGINT = 2**63 - 1

Progress = Callable[[int], None]


def _stats_by(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any], *, summary: bool
) -> list[dict[str, Any]]:
    """One grouping of dead-event stats: from the summary (migration 0012) when it serves the
    filter, else the exact dead_event_stats; both give the same rows in the same order."""
    if not summary:
        return queries.fetch_all(conn, f"dead_stats_by_{name}", params)
    if name == "error":
        return queries.fetch_all(conn, "dead_stats_by_error_summary", params)
    return queries.fetch_all(conn, "dead_stats_grouped_summary", {**params, "by": name})


def _changed(row: dict[str, Any]) -> bool:
    """An exported row whose payload no longer matches its checksum (json: a boolean column,
    csv: its text)."""
    return row.get("payload_intact") in (False, "false")


def _valid_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_BIGINT


def _check_positive(name: str, value: int | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidFilter(f"{name} must be an integer >= {low}, got {value!r}")


def _prefetched(conn: psycopg.Connection[Any], fetch: str) -> Iterator[list[dict[str, Any]]]:
    """The chunks of an open cursor (``fetch`` is its FETCH query), each fetched by a helper
    thread while the caller handles the one before.

    A FETCH is a round trip: alone, PostgreSQL idles while the client writes a chunk and the
    client idles while PostgreSQL builds the next, and an export takes the sum of the two. The
    helper overlaps them. At most _PREFETCH chunks wait in the queue, so memory stays bounded;
    the connection is only used by the helper until this generator ends.
    """
    handoff: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue(_PREFETCH)
    stop = threading.Event()

    def put(item: list[dict[str, Any]] | BaseException | None) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            while not stop.is_set() and (chunk := queries.fetch_all(conn, fetch)):
                put(chunk)
            put(None)
        except BaseException as exc:  # handed to the caller's thread, raised there
            put(exc)

    helper = threading.Thread(target=produce, name="dispatchbox-export-fetch", daemon=True)
    helper.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # On the caller's error (or Ctrl-C) too: the helper finishes its FETCH and stops, and
        # only then does the caller's transaction roll back on this connection.
        stop.set()
        helper.join()


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

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection that never prepares: units of work use conn.transaction()."""
        if self._pool is None:
            assert self._dsn is not None
            conn = db.connect(self._dsn, autocommit=True, prepare_threshold=None)
            try:
                yield conn
            finally:
                conn.close()
            return
        with self._pool.connection() as conn:
            saved = (conn.autocommit, conn.prepare_threshold)
            conn.autocommit = True
            conn.prepare_threshold = None
            try:
                yield conn
            finally:
                conn.prepare_threshold = saved[1]
                if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                    conn.autocommit = saved[0]

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """An autocommit, unprepared connection for the services built on this repository
        (dispatchbox.redrive): the same pool or DSN."""
        return self._connection()

    def redrive(self) -> RedriveService:
        """Canary and paced redrives, dry-run plans and operations (dispatchbox.redrive)."""
        from dispatchbox.redrive import RedriveService

        return RedriveService(self.connection)

    @staticmethod
    def _filter(filter: DeadEventFilter | None, **fields: Any) -> DeadEventFilter:
        given = {k: v for k, v in fields.items() if v is not None}
        if filter is None:
            return DeadEventFilter(**given)
        if not isinstance(filter, DeadEventFilter):
            raise TypeError("filter must be a DeadEventFilter")
        if given:
            raise TypeError("pass either filter= or individual filter arguments, not both")
        return filter

    @staticmethod
    def _audit(
        conn: psycopg.Connection[Any],
        *,
        actor: str,
        action: str,
        affected: int,
        event_ids: Sequence[int] | None = None,
        filter: DeadEventFilter | None = None,
        outcome: str = "completed",
        details: dict[str, Any] | None = None,
    ) -> int:
        audit_id = queries.fetch_value(
            conn,
            "audit_insert",
            {
                "actor": actor,
                "action": action,
                "event_ids": list(event_ids) if event_ids is not None else None,
                "filter": json.dumps(filter.to_json()) if filter is not None else None,
                "affected": affected,
                "outcome": outcome,
                "details": json.dumps(details or {}),
            },
        )
        return int(audit_id)

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
            filter,
            aggregate_type=aggregate_type,
            event_type=event_type,
            since=since,
            until=until,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint,
        )
        params = {**flt.params(), "limit": limit, "offset": offset, "after_id": after_id}
        with self._connection() as conn:
            rows = queries.fetch_all(conn, "dead_list", params)
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
            filter,
            aggregate_type=aggregate_type,
            event_type=event_type,
            since=since,
            until=until,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint,
        )
        name = "dead_count_summary" if flt.summary_serves else "dead_count"
        with self._connection() as conn:
            return int(queries.fetch_value(conn, name, flt.params()))

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
            filter,
            aggregate_type=aggregate_type,
            event_type=event_type,
            since=since,
            until=until,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint,
        )
        params = flt.params()
        groups: dict[str, list[dict[str, Any]]] = {}
        with self._connection() as conn, conn.transaction():
            queries.execute(conn, "dead_snapshot")
            for name in wanted:
                groups[name] = _stats_by(conn, name, params, summary=flt.summary_serves)
            totals_query = "dead_stats_totals" + ("_summary" if flt.summary_serves else "")
            totals = None if wanted else queries.fetch_one(conn, totals_query, params)
        if totals is None:
            first = groups[wanted[0]]
            seen_first = [g["first_seen"] for g in first if g["first_seen"] is not None]
            seen_last = [g["last_seen"] for g in first if g["last_seen"] is not None]
            totals = {
                "total": sum(g["count"] for g in first),
                "oldest_dead_at": min(seen_first, default=None),
                "newest_dead_at": max(seen_last, default=None),
            }
        return DeadEventStats(
            total=int(totals["total"]),
            oldest_dead_at=totals["oldest_dead_at"],
            newest_dead_at=totals["newest_dead_at"],
            by_event_type=[GroupStat(**g) for g in groups["event_type"]]
            if "event_type" in groups
            else None,
            by_aggregate_type=[GroupStat(**g) for g in groups["aggregate_type"]]
            if "aggregate_type" in groups
            else None,
            by_error=[ErrorGroup(**g) for g in groups["error"]] if "error" in groups else None,
            by_destination=[GroupStat(**g) for g in groups["destination"]]
            if "destination" in groups
            else None,
        )

    def get_event(self, event_id: int) -> EventDetail | None:
        """One event in any state with its error history, or None when there is no such id."""
        if not _valid_id(event_id):
            return None
        with self._connection() as conn, conn.transaction():
            queries.execute(conn, "dead_snapshot")
            row = queries.fetch_one(conn, "event_get", {"id": event_id})
            if row is None:
                return None
            errors = queries.fetch_all(conn, "event_errors", {"id": event_id})
        return EventDetail(**row, errors=[ErrorRecord(**e) for e in errors])

    def history(self, limit: int = 50) -> list[AuditEntry]:
        """The latest audited actions on dead events, newest first."""
        _check_positive("limit", limit)
        with self._connection() as conn:
            rows = queries.fetch_all(conn, "audit_history", {"limit": limit})
        return [AuditEntry(**row) for row in rows]

    # -- redrive -------------------------------------------------------------------------------

    def retry_dead_event(self, event_id: int, *, actor: str | None = None) -> bool:
        """Send one dead event back to pending. False when there is no such event; EventNotDead
        (a ValueError) when it exists but is not dead."""
        if not _valid_id(event_id):
            return False
        who = actor or default_actor()
        with self._connection() as conn:
            with conn.transaction():
                done = queries.fetch_all(
                    conn, "dead_redrive_ids", {"ids": [event_id], "actor": who}
                )
                if done:
                    self._audit(
                        conn,
                        actor=who,
                        action="retry",
                        affected=1,
                        event_ids=[event_id],
                        details=checksum.report("retry", checksum.mismatched(conn, [event_id])),
                    )
                    queries.execute(conn, "outbox_notify")
            if done:
                return True
            found = queries.fetch_all(conn, "events_status", {"ids": [event_id]})
        if not found:
            return False
        raise EventNotDead(
            f"event {event_id} is {found[0]['status']}, not dead; only dead events can be retried"
        )

    def classify_ids(self, ids: Iterable[int]) -> tuple[list[int], list[int], list[int]]:
        """Split ids into (dead, missing, not dead) without changing anything (for --dry-run)."""
        wanted = list(dict.fromkeys(ids))
        candidates = [i for i in wanted if _valid_id(i)]
        with self._connection() as conn:
            found = {
                r["id"]: r["status"]
                for r in queries.fetch_all(conn, "events_status", {"ids": candidates})
            }
        dead = [i for i in wanted if found.get(i) == "dead"]
        missing = [i for i in wanted if i not in found]
        not_dead = [i for i in wanted if found.get(i) not in (None, "dead")]
        return dead, missing, not_dead

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
        wanted = list(dict.fromkeys(event_ids if event_ids is not None else ids or ()))
        bad_type = [i for i in wanted if not isinstance(i, int) or isinstance(i, bool)]
        if bad_type:
            raise InvalidFilter(f"event ids must be integers, got {bad_type[0]!r}")
        if not wanted:
            return 0
        who = actor or default_actor()
        out_of_range = [i for i in wanted if not _valid_id(i)]
        candidates = [i for i in wanted if _valid_id(i)]
        with self._connection() as conn, conn.transaction():
            found = {
                r["id"]: r["status"]
                for r in queries.fetch_all(conn, "events_status", {"ids": candidates})
            }
            missing = out_of_range + [i for i in candidates if i not in found]
            not_dead = [i for i in candidates if found.get(i) not in (None, "dead")]
            if (missing or not_dead) and not skip_invalid:
                raise InvalidEventIds(missing=missing, not_dead=not_dead)
            dead = [i for i in candidates if found.get(i) == "dead"]
            done = {
                r["id"]
                for r in queries.fetch_all(conn, "dead_redrive_ids", {"ids": dead, "actor": who})
            }
            # Redriven or archived by someone else between the two statements.
            changed = [i for i in dead if i not in done]
            if changed and not skip_invalid:
                raise InvalidEventIds(missing=[], not_dead=changed)
            redriven = [i for i in dead if i in done]
            self._audit(
                conn,
                actor=who,
                action="retry_batch",
                affected=len(redriven),
                event_ids=redriven,
                details={
                    "requested": len(wanted),
                    "skipped": missing + not_dead + changed,
                    **checksum.report("retry_batch", checksum.mismatched(conn, redriven)),
                },
            )
            if redriven:
                queries.execute(conn, "outbox_notify")
        return len(redriven)

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

        Each batch is one call of the SQL function ``redrive_dead_events`` (migration 0005, the
        one a DBA runs from psql or pg_cron) and its own transaction, taking the next dead events
        in id order. ``rate`` caps events made pending per second (batches shrink to at most
        ``rate`` and are paced), so a recovering downstream is not flooded. Interrupted (Ctrl-C,
        an error), it keeps the batches already committed, records the action as interrupted
        with their count, and re-raises; run it again to continue.
        """
        flt = self._filter(filter)
        _check_positive("limit", limit)
        if rate is not None and (isinstance(rate, bool) or not rate > 0):
            raise InvalidFilter(f"rate must be a positive number of events per second, not {rate}")
        who = actor or default_actor()
        size = self.batch_size if rate is None else max(1, min(self.batch_size, int(rate)))
        details: dict[str, Any] = {"limit": limit, "rate": rate, "batch_size": size}
        params: dict[str, Any] = {**flt.params(), "actor": who}
        total = skipped = failed = 0
        after_id = 0
        audit_id: int | None = None
        started = time.monotonic()
        with self._connection() as conn:
            mismatched = checksum.mismatched_dead(conn, flt.params())
            details.update(checksum.report("retry_filter", mismatched))
            try:
                while limit is None or total < limit:
                    params["after_id"] = after_id
                    params["batch_size"] = size if limit is None else min(size, limit - total)
                    with conn.transaction():
                        current = audit_id
                        if current is None:
                            current = self._audit(
                                conn,
                                actor=who,
                                action="retry_filter",
                                affected=0,
                                filter=flt,
                                outcome="in_progress",
                                details=details,
                            )
                        row = queries.fetch_one(conn, "dead_redrive_batch", params)
                        assert row is not None
                        n = int(row["processed"])
                        if n:
                            queries.execute(conn, "audit_progress", {"id": current, "affected": n})
                    audit_id = current  # committed: from here on the audit row exists
                    total += n
                    skipped += int(row["skipped"])
                    failed += int(row["failed"])
                    if progress is not None and n:
                        progress(total)
                    # The function stops short of batch_size only when nothing matching is left.
                    if n < params["batch_size"]:
                        break
                    after_id = int(row["last_id"])
                    if rate is not None:
                        lag = started + total / rate - time.monotonic()
                        if lag > 0:
                            time.sleep(lag)
            except BaseException:
                if audit_id is not None:
                    self._finish(conn, audit_id, "interrupted")
                logger.info("redrive by filter interrupted after %d events", total)
                raise
            if audit_id is not None:
                self._finish(conn, audit_id, "completed")
        if skipped or failed:
            logger.warning(
                "redrive by filter: %d skipped (held or changed), %d failed", skipped, failed
            )
        return RedriveCounts(processed=total, skipped=skipped, failed=failed)

    @staticmethod
    def _finish(conn: psycopg.Connection[Any], audit_id: int, outcome: str) -> None:
        try:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.rollback()
            queries.execute(conn, "audit_finish", {"id": audit_id, "outcome": outcome})
        except psycopg.Error as exc:
            # The batches' counts are already in the row; only the outcome is missing (it stays
            # in_progress, which reads as "died mid-way"). Info, not warning: the caller is
            # already reporting the failure that brought us here, in one line.
            logger.info("could not mark audit entry %d %s: %s", audit_id, outcome, exc)

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
        who = actor or default_actor()
        writer = Writer(out, fmt, role=who)
        with self._connection() as conn, conn.transaction():
            queries.execute(conn, "export_utc")
            writer.begin()
            queries.execute(
                conn,
                "dead_export_csv" if fmt is ExportFormat.CSV else "dead_export_json",
                flt.params(),
            )
            mismatched: list[int] = []
            for chunk in _prefetched(conn, "dead_export_fetch"):
                writer.write_chunk(chunk)
                mismatched += [int(r["id"]) for r in chunk if _changed(r)]
                if progress is not None:
                    progress(writer.count)
            writer.end()
            self._audit(
                conn,
                actor=who,
                action="export",
                affected=writer.count,
                filter=flt,
                details={
                    "format": fmt.value,
                    "destination": destination,
                    **checksum.report("export", mismatched),
                },
            )
        return writer.count

    # -- purge ---------------------------------------------------------------------------------

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
        ``dead_purge_batch``, the same move narrowed by the filter); archived events can no
        longer be retried, so an operator purges one error group without touching the others.
        Each batch is its own transaction, with the audit row (action ``purge``) kept up to date.
        """
        _check_positive("older_than_days", older_than_days, allow_zero=True)
        flt = self._filter(filter)
        who = actor or default_actor()
        total = 0
        audit_id: int | None = None
        with self._connection() as conn:
            archiver.require_schema(conn)
            # One cutoff for the whole run: events dying while it runs are not chased.
            cutoff = queries.fetch_value(conn, "archive_cutoff", {"days": older_than_days})
            if flt.is_empty:
                query = "archive_batch"
                params = {"status": "dead", "cutoff": cutoff, "batch_size": self.batch_size}
            else:
                query = "dead_purge_batch"
                params = {**flt.params(), "cutoff": cutoff, "batch_size": self.batch_size}
            details = {"older_than_days": older_than_days, "cutoff": cutoff.isoformat()}
            try:
                while True:
                    with conn.transaction():
                        current = audit_id
                        if current is None:
                            current = self._audit(
                                conn,
                                actor=who,
                                action="purge",
                                affected=0,
                                filter=None if flt.is_empty else flt,
                                outcome="in_progress",
                                details=details,
                            )
                        n = int(queries.fetch_value(conn, query, params))
                        if n:
                            queries.execute(conn, "audit_progress", {"id": current, "affected": n})
                    audit_id = current
                    total += n
                    if progress is not None:
                        progress(total)
                    # Stop on an empty batch, not a short one: rows another transaction holds
                    # are skipped (SKIP LOCKED), so a short batch does not mean the end.
                    if n == 0:
                        break
            except BaseException:
                if audit_id is not None:
                    self._finish(conn, audit_id, "interrupted")
                raise
            if audit_id is not None:
                self._finish(conn, audit_id, "completed")
        return total

    def count_purgeable(
        self, older_than_days: int, *, filter: DeadEventFilter | None = None
    ) -> int:
        """How many dead events purge --older-than-days N (and the filter) would move."""
        _check_positive("older_than_days", older_than_days, allow_zero=True)
        flt = self._filter(filter)
        with self._connection() as conn:
            cutoff = queries.fetch_value(conn, "archive_cutoff", {"days": older_than_days})
            params = {**flt.params(), "cutoff": cutoff}
            return int(queries.fetch_value(conn, "dead_count_older_than", params))

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
