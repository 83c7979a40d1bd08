"""The plain redrive by filter (``retry-batch --all-matching`` without --canary, --adaptive or
--max-replays; the API's and the console's retry by filter), one batch at a time: the
repository's loop (audit, rate, progress) calls ``redrive_batch`` for each of its transactions.

Order: batches go in id order, so an aggregate's earlier events are always pending before its
later ones; what could still reorder an aggregate is an earlier event skipped because another
transaction held it. ``Held`` remembers those aggregates for the rest of the run and the
batches leave their later events dead (counted as skipped; run the redrive again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from dispatchbox import queries


@dataclass
class Held:
    """Aggregates (as PostgreSQL writes ROW(aggregate_type, aggregate_id)::text) with an event a
    batch could not take: their later events stay dead for the rest of the run."""

    aggregates: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PlainBatch:
    picked: int  # matching dead events looked at (fewer than asked: none left)
    processed: int  # made pending
    last_id: int | None  # where the next batch starts


def redrive_batch(conn: psycopg.Connection[Any], params: dict[str, Any], held: Held) -> PlainBatch:
    """One batch (``params``: the filter's, ``actor``, ``after_id``, ``batch_size``), in the
    caller's transaction."""
    row = queries.fetch_one(
        conn, "redrive_plain_batch", {**params, "held": sorted(held.aggregates)}
    )
    assert row is not None
    held.aggregates.update(row["held"])
    last = row["last_id"]
    return PlainBatch(
        picked=int(row["picked"]),
        processed=int(row["processed"]),
        last_id=None if last is None else int(last),
    )
