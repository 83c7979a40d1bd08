"""The outbox's health for `dispatchbox db status`, at a cost that does not grow with the table.

The ``outbox_health`` view counts every pending and dead event exactly, which reads each partial
index whole: a millisecond for 10,000 events, about a second for 10,000,000. Here a state's count
is exact up to ``exact_below`` events and an estimate above, marked as such:

* the planner's estimate of each state is read first (its statistics of ``outbox_event.status``)
  with the number of rows changed since those statistics were taken. Each change moves a state's
  true count at most one away from the estimate, so when the estimate minus that drift is still
  above twice the threshold (margin for the statistics' sampling), the state is reported as the
  estimate without reading its index;
* every other state is counted, reading at most ``exact_below + 1`` index entries; one that
  reaches that many is reported as the estimate (or as "more than" when there is none).

The dead count and the oldest dead event are exact at any size: they are read from the dead-letter
summary of migration 0012 (one row per group of dead events). The other columns (oldest pending
age, expired leases) are exact and read a handful of index entries. SQL: sql/queries/status.sql.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import outbox as data
from dispatchbox.events import EventStatus

#: Counts at or below this are exact by default; reading this many index entries takes ~1 ms.
EXACT_BELOW = 10_000

#: The states counted from the outbox's index (dead comes from the summary, always exact).
COUNTED = (EventStatus.PENDING, EventStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """outbox_health's columns; ``estimated`` names the counts that are planner estimates."""

    values: dict[str, Any]
    estimated: frozenset[str] = field(default_factory=frozenset)
    exact_below: int | None = EXACT_BELOW
    analyzed_at: datetime | None = None


def outbox_status(
    conn: psycopg.Connection[Any], *, exact_below: int | None = EXACT_BELOW
) -> OutboxStatus:
    """The outbox's health; ``exact_below=None`` counts every state exactly, however long."""
    if exact_below is None:
        caps: dict[str, int | None] = dict.fromkeys(COUNTED)
        values = data.status_bounded(conn, _cap_params(caps))
        return OutboxStatus(values=values, exact_below=None)
    cap = exact_below + 1
    estimates = {r["status"]: r for r in data.status_estimates(conn)}
    caps = {}
    for state in COUNTED:
        row = estimates.get(state)
        surely_over = row is not None and row["estimate"] - row["changed_since"] > 2 * cap
        caps[state] = 0 if surely_over else cap
    values = data.status_bounded(conn, _cap_params(caps))
    over = [s for s in COUNTED if caps[s] == 0 or values.get(s, 0) >= cap]
    analyzed_at = None
    for state in over:
        row = estimates.get(state)
        # Never below what was counted: statistics older than the backlog would say less.
        values[state] = max(int(row["estimate"]), cap) if row else cap
        analyzed_at = row["analyzed_at"] if row else analyzed_at
    return OutboxStatus(
        values=values,
        estimated=frozenset(over),
        exact_below=exact_below,
        analyzed_at=analyzed_at,
    )


def _cap_params(caps: dict[str, int | None]) -> dict[str, int | None]:
    return {f"{state}_cap": cap for state, cap in caps.items()}


def status_lines(status: OutboxStatus) -> list[str]:
    """What `db status` prints under "outbox health": one line a column, estimates marked ~."""
    lines = []
    for key, value in status.values.items():
        shown = "-" if value is None else str(value)
        if key in status.estimated and status.analyzed_at is None:
            shown = f"more than {status.exact_below} (never analysed: no estimate)"
        elif key in status.estimated:
            shown = f"~{value} (estimated)"
        lines.append(f"  {key:<28} {shown}")
    if status.estimated:
        when = status.analyzed_at.isoformat(timespec="seconds") if status.analyzed_at else "never"
        lines.append(
            f"  (~: more than {status.exact_below:,} events, so estimated from the planner's "
            f"statistics of {when} and the rows changed since; `db status --exact` counts "
            "them, reading every one)"
        )
    return lines
