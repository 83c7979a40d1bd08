"""The dry-run report shown before a bulk redrive: what would go, grouped, what would conflict,
and how long it would take at the chosen rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import redrive as data
from dispatchbox.filters import DeadEventFilter

# Ids listed per conflict kind (the counts are exact).
CONFLICT_IDS = 20
DIMENSIONS = ("fingerprint", "event_type", "destination", "age")


@dataclass(frozen=True)
class PlanGroup:
    key: str
    count: int
    signature: str | None = None


@dataclass(frozen=True)
class RedrivePlan:
    """What ``retry-batch --dry-run`` reports (``to_json`` is the --format json / API form)."""

    total: int
    over_replays: int  # left dead by --max-replays
    oldest_dead_at: datetime | None
    newest_dead_at: datetime | None
    aggregates: int
    groups: dict[str, list[PlanGroup]] = field(default_factory=dict)
    moved_on: int = 0  # a newer event of the same aggregate is done
    moved_on_ids: list[int] = field(default_factory=list)
    key_taken: int = 0  # a newer event holds the idempotency key
    key_taken_ids: list[int] = field(default_factory=list)
    behind: int = 0  # an earlier event of its aggregate is dead and not in the selection
    behind_ids: list[int] = field(default_factory=list)
    rate: float | None = None
    estimate_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "over_replays": self.over_replays,
            "oldest_dead_at": self.oldest_dead_at.isoformat() if self.oldest_dead_at else None,
            "newest_dead_at": self.newest_dead_at.isoformat() if self.newest_dead_at else None,
            "aggregates": self.aggregates,
            "groups": {
                d: [{"key": g.key, "count": g.count, "signature": g.signature} for g in gs]
                for d, gs in self.groups.items()
            },
            "conflicts": {
                "aggregate_moved_on": {"count": self.moved_on, "ids": self.moved_on_ids},
                "idempotency_key_taken": {"count": self.key_taken, "ids": self.key_taken_ids},
                "behind_dead_event": {"count": self.behind, "ids": self.behind_ids},
            },
            "rate": self.rate,
            "estimate_seconds": self.estimate_seconds,
        }


def selection_params(
    flt: DeadEventFilter, *, max_replays: int | None, cutoff: datetime | None = None
) -> dict[str, Any]:
    return {**flt.params(), "max_replays": max_replays, "cutoff": cutoff}


def plan_redrive(
    conn: psycopg.Connection[Any],
    flt: DeadEventFilter,
    *,
    max_replays: int | None = None,
    rate: float | None = None,
    limit: int | None = None,
) -> RedrivePlan:
    """The report, read in one snapshot (call inside a transaction for that)."""
    params = {**selection_params(flt, max_replays=max_replays), "max_ids": CONFLICT_IDS}
    totals = data.redrive_plan_totals(conn, params) or {}
    groups: dict[str, list[PlanGroup]] = {d: [] for d in DIMENSIONS}
    for row in data.redrive_plan_groups(conn, params):
        if row["dimension"] == "destination" and row["key"] is None:
            continue  # no destination column yet (per-destination dead letters)
        signature = row["signature"] if row["dimension"] == "fingerprint" else None
        groups[row["dimension"]].append(PlanGroup(row["key"], int(row["count"]), signature))
    conflicts = data.redrive_plan_conflicts(conn, params) or {}
    total = int(totals.get("total") or 0)
    todo = total if limit is None else min(total, limit)
    return RedrivePlan(
        total=todo,
        over_replays=int(totals.get("over_replays") or 0),
        oldest_dead_at=totals.get("oldest_dead_at"),
        newest_dead_at=totals.get("newest_dead_at"),
        aggregates=int(conflicts.get("aggregates") or 0),
        groups={d: g for d, g in groups.items() if g},
        moved_on=int(conflicts.get("moved_on") or 0),
        moved_on_ids=list(conflicts.get("moved_on_ids") or []),
        key_taken=int(conflicts.get("key_taken") or 0),
        key_taken_ids=list(conflicts.get("key_taken_ids") or []),
        behind=int(conflicts.get("behind") or 0),
        behind_ids=list(conflicts.get("behind_ids") or []),
        rate=rate,
        estimate_seconds=(todo / rate) if rate else None,
    )
