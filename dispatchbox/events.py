"""OutboxEvent, what a handler receives, and the status state machine.

States and who moves an event out of each:

``pending``
    Waiting to be delivered, once ``next_attempt_at`` has passed. A worker's claim moves it to
    ``running`` (one attempt counted). Nothing else leaves this state.
``running``
    Leased by one worker (``locked_by``, ``locked_until``, ``lease_token``) while its handler
    runs. The worker holding the lease moves it to ``done`` (success), back to ``pending``
    (failure with attempts left, after a backoff; or given back unstarted at shutdown, the
    attempt uncounted) or to ``dead`` (failure at ``max_attempts``, or ``PermanentError``).
    When the lease expires the reaper does the same as a failure: ``pending`` or ``dead``.
``done``
    Delivered. Only archival moves it (to ``outbox_event_archive``).
``dead``
    Gave up; ``last_error`` and ``outbox_event_error`` say why. An operator's retry (redrive)
    moves it to ``pending`` with ``attempts`` reset; archival and purge remove it.

Every state change in SQL names the state (and, for ``running``, the lease token) it expects,
so a row never changes under someone who holds it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class EventStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event as a handler sees it; ``payload`` and ``headers`` arrive decoded."""

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    headers: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    created_at: datetime | None = None
