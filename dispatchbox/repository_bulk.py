"""Export and purge of dead events for OutboxRepository: the two bulk operations.

Export streams a server-side cursor a chunk at a time, the next chunk fetched while the last
one is written; purge archives (never deletes) in bounded batches (dispatchbox.data.batches),
each its own transaction with the audit row kept up to date.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import psycopg

from dispatchbox.data import archive, audit
from dispatchbox.data import dead_letters as data
from dispatchbox.delivery import checksum
from dispatchbox.events import EventStatus
from dispatchbox.export import ExportFormat, Writer
from dispatchbox.filters import DeadEventFilter
from dispatchbox.repository_redrive import AuditedBatches

Conn = psycopg.Connection[Any]
Chunk = list[dict[str, Any]]
Progress = Callable[[int], None]
# Export chunks fetched ahead of the writer (each is one FETCH, 5,000 rows).
_PREFETCH = 2


def _changed(row: dict[str, Any]) -> bool:
    """An exported row whose payload no longer matches its checksum (json: a boolean column,
    csv: its text)."""
    return row.get("payload_intact") in (False, "false")


def _prefetched(fetch: Callable[[], Chunk]) -> Iterator[Chunk]:
    """The chunks ``fetch`` returns until an empty one, each fetched by a helper thread while
    the caller handles the one before.

    A FETCH is a round trip: alone, PostgreSQL idles while the client writes a chunk and the
    client idles while PostgreSQL builds the next, and an export takes the sum of the two. The
    helper overlaps them. At most _PREFETCH chunks wait in the queue, so memory stays bounded;
    the connection is only used by the helper until this generator ends.
    """
    handoff: queue.Queue[Chunk | BaseException | None] = queue.Queue(_PREFETCH)
    stop = threading.Event()

    def put(item: Chunk | BaseException | None) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            while not stop.is_set() and (chunk := fetch()):
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


def export(
    conn: Conn,
    out: TextIO,
    fmt: ExportFormat,
    flt: DeadEventFilter,
    *,
    actor: str,
    destination: str | None,
    progress: Progress | None,
) -> int:
    """OutboxRepository.export_dead_events on an autocommit connection."""
    writer = Writer(out, fmt, role=actor)
    with conn.transaction():
        writer.begin()
        data.open_export(conn, flt, csv=fmt is ExportFormat.CSV)
        mismatched: list[int] = []
        for chunk in _prefetched(lambda: data.export_chunk(conn)):
            writer.write_chunk(chunk)
            mismatched += [int(r["id"]) for r in chunk if _changed(r)]
            if progress is not None:
                progress(writer.count)
        writer.end()
        audit.insert(
            conn,
            actor=actor,
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


def purge(
    conn: Conn,
    flt: DeadEventFilter,
    older_than_days: int,
    *,
    actor: str,
    batch_size: int,
    progress: Progress | None,
) -> int:
    """OutboxRepository.cleanup_old_dead_events on an autocommit connection, after
    archiver.require_schema."""
    # One cutoff for the whole run: events dying while it runs are not chased.
    cutoff = archive.cutoff(conn, older_than_days)
    details = {"older_than_days": older_than_days, "cutoff": cutoff.isoformat()}
    action = AuditedBatches(
        conn,
        actor=actor,
        action="purge",
        filter=None if flt.is_empty else flt,
        details=details,
    )

    def step(total: int) -> int:
        if flt.is_empty:
            n = archive.move_batch(conn, EventStatus.DEAD, cutoff, batch_size)
        else:
            n = data.archive_batch(conn, flt, cutoff, batch_size)
        action.record(n)
        return n

    def committed(n: int, total: int) -> None:
        if progress is not None:
            progress(total)

    return action.run(step, committed=committed)


def count_archivable(conn: Conn, flt: DeadEventFilter, older_than_days: int) -> int:
    """OutboxRepository.count_archivable on a connection."""
    return data.count_older_than(conn, flt, archive.cutoff(conn, older_than_days))
