"""`dead-events diff --since T`: error groups against a moment such as a deploy."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from dispatchbox.data import redrive as data

ORDER = {"new": 0, "growing": 1, "quiet": 2, "resolved": 3}


@dataclass(frozen=True)
class GroupChange:
    """``change``: new (first seen since), growing (seen before, deaths since), quiet (dead
    events, none died since), resolved (seen in the lookback before, nothing dead now)."""

    change: str
    fingerprint: str
    before: int  # dead now, died before the moment
    since: int  # dead now, died since
    first_seen_at: datetime
    last_seen_at: datetime
    event_type: str
    signature: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "fingerprint": self.fingerprint,
            "before": self.before,
            "since": self.since,
            "first_seen_at": self.first_seen_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "event_type": self.event_type,
            "signature": self.signature,
        }


def classify_groups(
    connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
    since: datetime,
    *,
    lookback: float = 7 * 86400.0,
) -> list[GroupChange]:
    try:
        floor = since - timedelta(seconds=lookback)
    except OverflowError:  # before year 1: every group ever seen
        floor = datetime.min.replace(tzinfo=UTC)
    with connect() as conn:
        rows = data.dead_diff(conn, {"since": since, "floor": floor})
    out = []
    for r in rows:
        before, after = int(r["before"]), int(r["since"])
        if r["first_seen_at"] >= since:
            change = "new"
        elif after:
            change = "growing"
        elif before:
            change = "quiet"
        else:
            change = "resolved"
        out.append(
            GroupChange(
                change=change,
                fingerprint=r["fingerprint"],
                before=before,
                since=after,
                first_seen_at=r["first_seen_at"],
                last_seen_at=r["last_seen_at"],
                event_type=r["event_type"],
                signature=r["signature"],
            )
        )
    out.sort(key=lambda g: (ORDER[g.change], -g.since, -g.before, g.fingerprint))
    return out
