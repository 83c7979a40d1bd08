"""What `dispatchbox monitor` shows, read from the database: one Sample a frame.

A sample is a handful of cheap reads in one read-only snapshot: the outbox's health as `db status`
reads it (pending and running exact up to 10,000 and estimated above, so a frame costs the same
on a backlog of ten million; dead exact from the dead-letter summary; the oldest pending age),
dead events by type from the dead-letter summary,
and the newest id with the events done in the last minute (indexes only). Rates come from two
samples: events in = how far the newest id moved, events out = done in the window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dispatchbox.data import metrics, outbox
from dispatchbox.outbox_status import outbox_status

# Seconds of completions the "out" rate averages over (outbox_event_done_at_idx).
OUT_WINDOW = 60


@dataclass(frozen=True, slots=True)
class Sample:
    """One frame's figures; ``taken`` is time.monotonic() when it was read."""

    taken: float
    pending: int
    running: int
    dead: int
    oldest_pending_age_seconds: float
    expired_leases: int
    max_id: int
    done_recently: int
    dead_by_type: list[tuple[str, int]] = field(default_factory=list)
    breakers: list[Any] | None = None
    # The counts that are planner estimates (more than 10,000 events in that state).
    estimated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rates:
    """Events a second: published (in) and completed (out)."""

    published: float | None
    completed: float


def sample(conn: psycopg.Connection[Any]) -> Sample:
    """Read one frame on an autocommit connection."""
    with conn.transaction():
        outbox.read_snapshot(conn)
        status = outbox_status(conn)
        health = status.values
        rates = outbox.rates(conn, OUT_WINDOW)
        by_type = metrics.dead_by_type(conn)
    totals: dict[str, int] = {}
    for row in by_type:
        totals[row["event_type"]] = totals.get(row["event_type"], 0) + int(row["count"])
    return Sample(
        taken=time.monotonic(),
        pending=int(health["pending"]),
        running=int(health["running"]),
        dead=int(health["dead"]),
        oldest_pending_age_seconds=float(health["oldest_pending_age_seconds"] or 0),
        expired_leases=int(health["expired_leases"]),
        max_id=int(rates["max_id"]),
        done_recently=int(rates["done_recently"]),
        dead_by_type=sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])),
        estimated=status.estimated,
    )


def rates(previous: Sample | None, current: Sample) -> Rates:
    """In from the newest id's movement since the previous frame (None on the first frame);
    out from the completions of the last OUT_WINDOW seconds."""
    published = None
    if previous is not None and current.taken > previous.taken:
        published = max(0, current.max_id - previous.max_id) / (current.taken - previous.taken)
    return Rates(published=published, completed=current.done_recently / OUT_WINDOW)
