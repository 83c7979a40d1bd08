"""Retry-batch, as the CLI and the HTTP API both offer it: ids (all or nothing, or skipping the
invalid ones) or a filter, with a dry run that says what would happen. One path for both, so
``dispatchbox dead-events retry-batch`` and ``POST /api/dead-events/retry-batch`` cannot drift;
each only words the result its own way. The work itself is OutboxRepository's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dispatchbox.filters import DeadEventFilter
from dispatchbox.repository import OutboxRepository


@dataclass(frozen=True, slots=True)
class RetryBatchResult:
    """What a retry-batch did, or on a dry run would do."""

    retried: int  # events made pending (0 on a dry run)
    dry_run: bool
    would_retry: int | None = None  # on a dry run: how many would be
    missing: list[int] = field(default_factory=list)  # ids that do not exist
    not_dead: list[int] = field(default_factory=list)  # ids that are not dead

    @property
    def invalid(self) -> bool:
        return bool(self.missing or self.not_dead)


def retry_ids(
    repo: OutboxRepository,
    ids: Sequence[int],
    *,
    actor: str,
    dry_run: bool = False,
    skip_invalid: bool = False,
) -> RetryBatchResult:
    """Redrive these dead events in one transaction. Without ``skip_invalid`` any missing or
    not-dead id fails the batch (InvalidEventIds, nothing retried); a dry run never raises and
    names them instead. With ``skip_invalid`` what is skipped is named from a look just
    before: the retry itself names nothing."""
    if dry_run:
        dead, missing, not_dead = repo.classify_ids(ids)
        return RetryBatchResult(
            retried=0, dry_run=True, would_retry=len(dead), missing=missing, not_dead=not_dead
        )
    if skip_invalid:
        _, missing, not_dead = repo.classify_ids(ids)
        done = repo.retry_dead_events_batch(ids, actor=actor, skip_invalid=True)
        return RetryBatchResult(retried=done, dry_run=False, missing=missing, not_dead=not_dead)
    return RetryBatchResult(retried=repo.retry_dead_events_batch(ids, actor=actor), dry_run=False)


def would_retry_matching(repo: OutboxRepository, flt: DeadEventFilter, limit: int | None) -> int:
    """How many dead events a retry-batch by this filter (at most ``limit``) would redrive."""
    count = repo.count_dead_events(filter=flt)
    return count if limit is None else min(count, limit)
