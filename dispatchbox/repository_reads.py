"""Multi-statement reads for OutboxRepository, each from one consistent snapshot: dead-letter
stats by grouping, and one event with its error history."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import dead_letters as data
from dispatchbox.filters import DeadEventFilter
from dispatchbox.records import DeadEventStats, ErrorGroup, ErrorRecord, EventDetail, GroupStat


def stats(conn: psycopg.Connection[Any], flt: DeadEventFilter, wanted: list[str]) -> DeadEventStats:
    """OutboxRepository.dead_event_stats for checked groupings: totals come from the first
    grouping (or their own query when none is wanted), all read from one snapshot."""
    groups: dict[str, list[dict[str, Any]]] = {}
    with conn.transaction():
        data.snapshot(conn)
        for name in wanted:
            groups[name] = data.stats_by(conn, name, flt)
        totals = None if wanted else data.stats_totals(conn, flt)
    if totals is None:
        first = groups[wanted[0]]
        seen_first = [g["first_seen"] for g in first if g["first_seen"] is not None]
        seen_last = [g["last_seen"] for g in first if g["last_seen"] is not None]
        totals = {
            "total": sum(g["count"] for g in first),
            "oldest_dead_at": min(seen_first, default=None),
            "newest_dead_at": max(seen_last, default=None),
        }

    def of(name: str) -> list[GroupStat] | None:
        return [GroupStat(**g) for g in groups[name]] if name in groups else None

    return DeadEventStats(
        total=int(totals["total"]),
        oldest_dead_at=totals["oldest_dead_at"],
        newest_dead_at=totals["newest_dead_at"],
        by_event_type=of("event_type"),
        by_aggregate_type=of("aggregate_type"),
        by_error=[ErrorGroup(**g) for g in groups["error"]] if "error" in groups else None,
        by_destination=of("destination"),
    )


def event_detail(conn: psycopg.Connection[Any], event_id: int) -> EventDetail | None:
    """OutboxRepository.get_event for a valid id."""
    with conn.transaction():
        data.snapshot(conn)
        row = data.event(conn, event_id)
        if row is None:
            return None
        errors = data.event_errors(conn, event_id)
    return EventDetail(**row, errors=[ErrorRecord(**e) for e in errors])
