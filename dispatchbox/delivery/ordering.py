"""Per-aggregate ordering: which event types opted in, and parking behind a dead event.

The claim itself is the named query ``worker_claim_ordered`` (used only when some handler has
``ordering``): an event of an ordered type is claimed only at the head of its aggregate, one at a
time, by claims serialised with a transaction-scoped advisory lock. Here: the plan the worker
passes to that claim, the "park" step after deaths, and the blocked-aggregates count for metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from dispatchbox.data import delivery as data
from dispatchbox.dispatcher import Dispatcher


@dataclass(frozen=True, slots=True)
class OrderingPlan:
    """The event types of each ordering mode, as the ordered claim takes them."""

    block: tuple[str, ...]
    skip: tuple[str, ...]
    park: tuple[str, ...]

    @classmethod
    def of(cls, dispatcher: Dispatcher) -> OrderingPlan | None:
        """The plan of a dispatcher's handlers; None when no handler asked for ordering (the
        worker then uses the plain claim)."""
        modes: dict[str, list[str]] = {"block": [], "skip": [], "park": []}
        for spec in dispatcher.specs():
            if spec.ordering is not None:
                modes[spec.ordering].append(spec.event_type)
        if not any(modes.values()):
            return None
        return cls(*(tuple(sorted(modes[m])) for m in ("block", "skip", "park")))

    @property
    def ordered(self) -> list[str]:
        return [*self.block, *self.skip, *self.park]

    def params(self) -> dict[str, list[str]]:
        """The arrays of worker_claim_ordered."""
        return {"ordered": self.ordered, "skip": list(self.skip), "park": list(self.park)}

    async def park_behind(
        self, conn: psycopg.AsyncConnection[Any], dead_ids: Iterable[int]
    ) -> list[tuple[int, int]]:
        """After events went dead: park the later events of their aggregates ("park" types).
        Returns (parked id, blocker id) pairs; nothing to do without "park" handlers."""
        ids = list(dead_ids)
        if not self.park or not ids:
            return []
        return await data.ordering_park(conn, ids, list(self.park))


def blocked_aggregates(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Aggregates held behind a failing event: ``waiting`` (its head failed and waits for a
    retry, later events behind it) and ``parked`` (a dead event holds parked ones)."""
    row = data.blocked_aggregates(conn)
    return {"waiting": int(row["waiting"]), "parked": int(row["parked"])}
