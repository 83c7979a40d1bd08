"""Where the next claim starts: after the last event claimed at each priority, and now and then
from the start of the claim order.

Every claimed event leaves a dead entry at the front of the claim index. Cleanup removes them
only once no transaction can still see them; while one holds an old snapshot (a report, a
pg_dump, a replica's hot_standby_feedback), a claim from the index's start walks every one of
them, and the drain slows down as they pile up (measured: 15 ms a claim after 150,000 events,
0.14 ms resumed after the last claimed place). So claims resume after the last place claimed
at each priority. An event can still appear behind such a place: one whose transaction
committed after later events were claimed, or one given back at a shutdown. A claim from the
start finds those; it runs whenever the time since the last one reaches FULL_CLAIM_SHARE times
what the last one cost, so it takes at most about 1/FULL_CLAIM_SHARE of the claimer's time,
and on a healthy table (where a claim from the start is cheap) it runs nearly every time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dispatchbox.data.worker import Claimed

PRIORITIES = 10  # priority is 1..10 (a CHECK constraint on outbox_event)
# A claim from the start again after this many times its own cost has passed.
FULL_CLAIM_SHARE = 20.0
# Never wait longer than this for a claim from the start, seconds: the bound on how late an
# event behind a remembered place can be found, whatever a full claim costs.
FULL_CLAIM_MAX_INTERVAL = 10.0


class ClaimPositions:
    """One worker process's places in the claim order (not shared: each process its own)."""

    def __init__(self) -> None:
        self._after: list[tuple[int, int] | None] = [None] * PRIORITIES
        self._full_at = -float("inf")  # time.monotonic() when the last full claim ended
        self._full_cost = 0.0  # seconds the last full claim took

    def after(self, now: float | None = None) -> list[tuple[int, int] | None] | None:
        """The places to resume from, or None when the next claim should start from the
        beginning (none claimed yet, or a claim from the start is due)."""
        now = time.monotonic() if now is None else now
        wait = min(FULL_CLAIM_SHARE * self._full_cost, FULL_CLAIM_MAX_INTERVAL)
        if now - self._full_at >= wait or not any(self._after):
            return None
        return self._after

    def restart(self) -> None:
        """Start the next claim from the beginning (events were skipped on purpose)."""
        self._full_at = -float("inf")

    def claimed(self, batch: Sequence[Claimed], *, full: bool, started: float) -> None:
        """Remember where a claim ended at each priority; ``full`` when it started at the
        beginning, ``started`` its time.monotonic() before it ran."""
        if full:
            self._full_at = time.monotonic()
            self._full_cost = self._full_at - started
        if not batch:
            return
        last = batch[-1]  # claim order: the last of the batch is the furthest at its priority
        after = self._after
        after[last.priority - 1] = (last.next_attempt_us, last.id)
        if batch[0].priority != last.priority:
            for item in batch:  # several priorities: the last of each
                after[item.priority - 1] = (item.next_attempt_us, item.id)
