"""Redrive of dead events for OutboxRepository: one event, a batch of ids, and by filter.

Every state change names the state it expects (only dead events are redriven) and writes its
audit row in the transaction that made the change. Redrive by filter runs in bounded batches
(dispatchbox.data.batches), each its own transaction, so an interrupted run keeps what it
committed and running it again continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import pq

from dispatchbox.data import audit, batches
from dispatchbox.data import dead_letters as data
from dispatchbox.delivery import checksum
from dispatchbox.errors import EventNotDead, InvalidEventIds, InvalidFilter
from dispatchbox.events import EventStatus
from dispatchbox.filters import DeadEventFilter
from dispatchbox.records import RedriveCounts

logger = logging.getLogger("dispatchbox.repository")

Conn = psycopg.Connection[Any]
Progress = Callable[[int], None]
_MAX_BIGINT = 2**63 - 1


def valid_id(value: Any) -> bool:
    """An event id PostgreSQL can hold (a positive bigint)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_BIGINT


def check_positive(name: str, value: int | None, *, allow_zero: bool = False) -> None:
    """None, or an integer of at least 1 (0 with ``allow_zero``); InvalidFilter otherwise."""
    if value is None:
        return
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidFilter(f"{name} must be an integer >= {low}, got {value!r}")


def checked_ids(ids: Iterable[int] | None) -> list[int]:
    """The ids in their first order without repeats; InvalidFilter when one is not an int."""
    wanted = list(dict.fromkeys(ids or ()))
    bad_type = [i for i in wanted if not isinstance(i, int) or isinstance(i, bool)]
    if bad_type:
        raise InvalidFilter(f"event ids must be integers, got {bad_type[0]!r}")
    return wanted


def finish(conn: Conn, audit_id: int, outcome: str) -> None:
    """Mark a multi-batch action's audit row ``outcome``; a failure here is only logged."""
    try:
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.rollback()
        audit.finish(conn, audit_id, outcome)
    except psycopg.Error as exc:
        # The batches' counts are already in the row; only the outcome is missing (it stays
        # in_progress, which reads as "died mid-way"). Info, not warning: the caller is
        # already reporting the failure that brought us here, in one line.
        logger.info("could not mark audit entry %d %s: %s", audit_id, outcome, exc)


class AuditedBatches:
    """The audit row of a multi-batch action (sql/queries/audit.sql): inserted ``in_progress``
    in the first batch's transaction, each batch's count added in that batch's transaction, and
    finished ``completed`` or ``interrupted`` at the end, so that whatever happens its count is
    what the committed batches did and a failed first batch records nothing."""

    def __init__(
        self,
        conn: Conn,
        *,
        actor: str,
        action: str,
        filter: DeadEventFilter | None,
        details: dict[str, Any],
    ) -> None:
        self.conn = conn
        self.actor = actor
        self.action = action
        self.filter = filter
        self.details = details
        self.audit_id: int | None = None  # once its first batch committed
        self._current: int | None = None  # in the batch in flight

    def record(self, n: int) -> None:
        """Inside a batch's transaction, after its work: the row exists, with ``n`` added."""
        self._current = self.audit_id
        if self._current is None:
            self._current = audit.insert(
                self.conn,
                actor=self.actor,
                action=self.action,
                affected=0,
                filter=self.filter,
                outcome="in_progress",
                details=self.details,
            )
        if n:
            audit.progress(self.conn, self._current, n)

    def run(
        self,
        step: batches.Step,
        *,
        stop: batches.Stop = batches.empty_batch,
        committed: batches.Committed | None = None,
        rate: float | None = None,
    ) -> int:
        """dispatchbox.data.batches.run_batches, with the row finished at the end; ``step``
        calls ``record`` in each batch."""

        def after_commit(n: int, total: int) -> None:
            self.audit_id = self._current  # committed: from here on the audit row exists
            if committed is not None:
                committed(n, total)

        try:
            total = batches.run_batches(
                self.conn, step, stop=stop, committed=after_commit, rate=rate
            )
        except BaseException:
            if self.audit_id is not None:
                finish(self.conn, self.audit_id, "interrupted")
            raise
        if self.audit_id is not None:
            finish(self.conn, self.audit_id, "completed")
        return total


def retry_one(conn: Conn, event_id: int, *, actor: str) -> bool:
    """OutboxRepository.retry_dead_event on an autocommit connection."""
    with conn.transaction():
        done = data.redrive_ids(conn, [event_id], actor=actor)
        if done:
            audit.insert(
                conn,
                actor=actor,
                action="retry",
                affected=1,
                event_ids=[event_id],
                details=checksum.report("retry", checksum.mismatched(conn, [event_id])),
            )
            data.notify_workers(conn)
    if done:
        return True
    found = data.statuses(conn, [event_id])
    if not found:
        return False
    raise EventNotDead(
        f"event {event_id} is {found[event_id]}, not dead; only dead events can be retried"
    )


def classify(conn: Conn, ids: Iterable[int]) -> tuple[list[int], list[int], list[int]]:
    """OutboxRepository.classify_ids: (dead, missing, not dead), changing nothing."""
    wanted = list(dict.fromkeys(ids))
    found = data.statuses(conn, [i for i in wanted if valid_id(i)])
    dead = [i for i in wanted if found.get(i) == EventStatus.DEAD]
    missing = [i for i in wanted if i not in found]
    not_dead = [i for i in wanted if found.get(i) not in (None, EventStatus.DEAD)]
    return dead, missing, not_dead


def retry_batch(conn: Conn, wanted: list[int], *, actor: str, skip_invalid: bool) -> int:
    """OutboxRepository.retry_dead_events_batch for checked, de-duplicated integer ids."""
    out_of_range = [i for i in wanted if not valid_id(i)]
    candidates = [i for i in wanted if valid_id(i)]
    with conn.transaction():
        found = data.statuses(conn, candidates)
        missing = out_of_range + [i for i in candidates if i not in found]
        not_dead = [i for i in candidates if found.get(i) not in (None, EventStatus.DEAD)]
        if (missing or not_dead) and not skip_invalid:
            raise InvalidEventIds(missing=missing, not_dead=not_dead)
        dead = [i for i in candidates if found.get(i) == EventStatus.DEAD]
        done = data.redrive_ids(conn, dead, actor=actor)
        # Redriven or archived by someone else between the two statements.
        changed = [i for i in dead if i not in done]
        if changed and not skip_invalid:
            raise InvalidEventIds(missing=[], not_dead=changed)
        redriven = [i for i in dead if i in done]
        audit.insert(
            conn,
            actor=actor,
            action="retry_batch",
            affected=len(redriven),
            event_ids=redriven,
            details={
                "requested": len(wanted),
                "skipped": missing + not_dead + changed,
                **checksum.report("retry_batch", checksum.mismatched(conn, redriven)),
            },
        )
        if redriven:
            data.notify_workers(conn)
    return len(redriven)


def redrive_by_filter(
    conn: Conn,
    flt: DeadEventFilter,
    *,
    actor: str,
    batch_size: int,
    limit: int | None,
    rate: float | None,
    progress: Progress | None,
) -> RedriveCounts:
    """OutboxRepository.redrive_dead_events on an autocommit connection."""
    size = batch_size if rate is None else max(1, min(batch_size, int(rate)))
    details: dict[str, Any] = {"limit": limit, "rate": rate, "batch_size": size}
    details.update(checksum.report("retry_filter", checksum.mismatched_dead(conn, flt)))
    action = AuditedBatches(conn, actor=actor, action="retry_filter", filter=flt, details=details)
    # Kept only once a batch committed: where the next batch starts, the counts.
    after_id = 0
    done = skipped = 0
    # Aggregates with an event this run could not take: their later events stay dead.
    held: set[str] = set()
    # Of the batch in flight.
    wanted = size
    row: dict[str, Any] = {}

    def step(total: int) -> int:
        nonlocal wanted, row
        wanted = size if limit is None else min(size, limit - total)
        row = data.redrive_batch(
            conn, flt, actor=actor, after_id=after_id, batch_size=wanted, held=held
        )
        n = int(row["processed"])
        action.record(n)
        return n

    def committed(n: int, total: int) -> None:
        nonlocal after_id, done, skipped
        done = total
        skipped += int(row["picked"]) - n
        if row["last_id"] is not None:
            after_id = int(row["last_id"])
        if progress is not None and n:
            progress(total)

    def stop(n: int, total: int) -> bool:
        # A batch picks fewer than asked only when nothing matching is left.
        return int(row["picked"]) < wanted or (limit is not None and total >= limit)

    try:
        action.run(step, stop=stop, committed=committed, rate=rate)
    except BaseException:
        logger.info("redrive by filter interrupted after %d events", done)
        raise
    if skipped:
        logger.warning("redrive by filter: %d skipped (held by another transaction)", skipped)
    return RedriveCounts(processed=done, skipped=skipped, failed=0)
