"""Dead-letter statements (sql/queries/dead_letters.sql): reads, redrive, export and purge.

Every function that narrows dead events takes the DeadEventFilter itself; its WHERE clause is
the one fragment sql/fragments/dead_event_filter.sql that the named queries share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

# What stats can group dead events by; each is one named query dead_stats_by_<grouping>.
GROUPINGS = ("event_type", "aggregate_type", "destination", "error")


def snapshot(conn: Conn) -> None:
    """Make the current transaction one consistent read-only snapshot (its first statement)."""
    queries.execute(conn, "read_snapshot")


def page(
    conn: Conn, flt: DeadEventFilter, *, limit: int, offset: int, after_id: int | None
) -> list[Row]:
    """One page of dead events in id order: OFFSET pages, or keyset pages after ``after_id``."""
    params = {**flt.params(), "limit": limit, "offset": offset, "after_id": after_id}
    return queries.fetch_all(conn, "dead_list", params)


def count(conn: Conn, flt: DeadEventFilter) -> int:
    """How many dead events match: from the dead-letter summary (migration 0012) when it serves
    the filter, else counted; the same number either way."""
    name = "dead_count_summary" if flt.summary_serves else "dead_count"
    return int(queries.fetch_value(conn, name, flt.params()))


def stats_by(conn: Conn, grouping: str, flt: DeadEventFilter) -> list[Row]:
    """Dead events per ``grouping`` (one of GROUPINGS), most first, with first and last death."""
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}")
    # The summary (migration 0012) when it serves the filter, else the exact grouping: both
    # give the same rows in the same order.
    if not flt.summary_serves:
        return queries.fetch_all(conn, f"dead_stats_by_{grouping}", flt.params())
    if grouping == "error":
        return queries.fetch_all(conn, "dead_stats_by_error_summary", flt.params())
    return queries.fetch_all(conn, "dead_stats_grouped_summary", {**flt.params(), "by": grouping})


def stats_totals(conn: Conn, flt: DeadEventFilter) -> Row:
    """Count, oldest and newest death of the matching dead events."""
    name = "dead_stats_totals_summary" if flt.summary_serves else "dead_stats_totals"
    row = queries.fetch_one(conn, name, flt.params())
    assert row is not None  # an aggregate without GROUP BY returns one row
    return row


def event(conn: Conn, event_id: int) -> Row | None:
    """One event in any state, with its error fingerprint when dead."""
    return queries.fetch_one(conn, "event_get", {"id": event_id})


def event_errors(conn: Conn, event_id: int) -> list[Row]:
    """An event's whole error history, oldest first."""
    return queries.fetch_all(conn, "event_errors", {"id": event_id})


def statuses(conn: Conn, ids: Sequence[int]) -> dict[int, str]:
    """The status of each of these ids that exists."""
    rows = queries.fetch_all(conn, "events_status", {"ids": list(ids)})
    return {int(r["id"]): str(r["status"]) for r in rows}


def redrive_ids(conn: Conn, ids: Sequence[int], *, actor: str) -> set[int]:
    """Redrive those of these events that are still dead; return the ids redriven."""
    rows = queries.fetch_all(conn, "dead_redrive_ids", {"ids": list(ids), "actor": actor})
    return {int(r["id"]) for r in rows}


def redrive_batch(
    conn: Conn,
    flt: DeadEventFilter,
    *,
    actor: str,
    after_id: int,
    batch_size: int,
    held: set[str],
) -> Row:
    """One batch of the plain redrive by filter (redrive_plain_batch): the next ``batch_size``
    matching dead events after ``after_id``, in id order, back to pending, except those of an
    aggregate in ``held``. An event another transaction holds is skipped and its aggregate added
    to ``held``, so that its later events do not overtake it for the rest of the run. A row
    (picked, processed, last_id, held); picked < batch_size: nothing matching is left."""
    params = {
        **flt.params(),
        "actor": actor,
        "after_id": after_id,
        "batch_size": batch_size,
        "held": sorted(held),
    }
    row = queries.fetch_one(conn, "redrive_plain_batch", params)
    assert row is not None  # an aggregate over the batch: always one row
    held.update(row["held"])
    return row


def notify_workers(conn: Conn) -> None:
    """Wake idle workers after a redrive (a hint; they poll anyway)."""
    queries.execute(conn, "outbox_notify")


def open_export(conn: Conn, flt: DeadEventFilter, *, csv: bool) -> None:
    """Open the export cursor over the matching dead events (CSV columns or JSON text), with
    timestamps in UTC; read it with ``export_chunk`` in the same transaction."""
    queries.execute(conn, "export_utc")
    queries.execute(conn, "dead_export_csv" if csv else "dead_export_json", flt.params())


def export_chunk(conn: Conn) -> list[Row]:
    """The next chunk of the export cursor (empty at the end)."""
    return queries.fetch_all(conn, "dead_export_fetch")


def count_older_than(conn: Conn, flt: DeadEventFilter, cutoff: datetime) -> int:
    """Matching dead events that died before the cutoff (what purge would move)."""
    return int(
        queries.fetch_value(conn, "dead_count_older_than", {**flt.params(), "cutoff": cutoff})
    )


def archive_batch(conn: Conn, flt: DeadEventFilter, cutoff: datetime, batch_size: int) -> int:
    """Move one batch of matching dead events that died before the cutoff, with their error
    history, to the archive; return how many moved."""
    params = {**flt.params(), "cutoff": cutoff, "batch_size": batch_size}
    return int(queries.fetch_value(conn, "dead_archive_batch", params))


async def aredrive_ids(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[int], *, actor: str
) -> set[int]:
    """``redrive_ids`` on an async connection."""
    rows = await queries.afetch_all(conn, "dead_redrive_ids", {"ids": list(ids), "actor": actor})
    return {int(r["id"]) for r in rows}


async def anotify_workers(conn: psycopg.AsyncConnection[Any]) -> None:
    """``notify_workers`` on an async connection."""
    await queries.aexecute(conn, "outbox_notify")
