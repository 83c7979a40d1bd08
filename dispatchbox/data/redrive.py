"""Redrive statements (sql/queries/redrive.sql): dry-run plans, canary and paced redrive
operations, their outcome and the dead-letter diff.

Each function runs the named query of the same name with the parameters the query names (the
redrive package builds them from the DeadEventFilter's ``params()`` and its settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]
Params = Mapping[str, Any] | None


def dead_diff(conn: Conn, params: Params = None) -> list[Row]:
    """Error groups against a moment (a deploy): per fingerprint ever seen, the dead events before
    and since %(since)s still dead, first and last seen. The caller names each group new
    (first seen since), growing (deaths since, seen before), quiet (dead events, none since)
    or resolved (seen since %(floor)s, the lookback before the moment, and nothing dead
    now)."""
    return queries.fetch_all(conn, "dead_diff", params)


def redrive_audit_reopen(conn: Conn, params: Params = None) -> None:
    """A resumed operation goes on in its audit row: in progress again."""
    queries.execute(conn, "redrive_audit_reopen", params)


def redrive_baseline(conn: Conn, params: Params = None) -> Any:
    """The error fingerprints of the selection: what a canary's failures are compared with."""
    return queries.fetch_value(conn, "redrive_baseline", params)


def redrive_canary_sample(conn: Conn, params: Params = None) -> Any:
    """A canary sample of about %(size)s events: whole aggregates picked at random until the sample
    holds that many events, so no aggregate is split between the canary and the rest (its
    events stay in order). Ids in id order."""
    return queries.fetch_value(conn, "redrive_canary_sample", params)


def redrive_db_now(conn: Conn, params: Params = None) -> Any:
    """The database clock."""
    return queries.fetch_value(conn, "redrive_db_now", params)


def redrive_new_fingerprints(conn: Conn, params: Params = None) -> list[Row]:
    """Error groups of the given events' failed attempts since %(since)s that are not in the
    baseline: the canary's "a new error appeared". Fingerprinted as last_error is (type:
    message)."""
    return queries.fetch_all(conn, "redrive_new_fingerprints", params)


def redrive_op_canary(conn: Conn, params: Params = None) -> None:
    """Record the canary sample that went out."""
    queries.execute(conn, "redrive_op_canary", params)


def redrive_op_insert(conn: Conn, params: Params = None) -> Row | None:
    """Start a redrive operation; returns its id and cutoff (the database's now())."""
    return queries.fetch_one(conn, "redrive_op_insert", params)


def redrive_op_list(conn: Conn, params: Params = None) -> list[Row]:
    """The latest operations, newest first."""
    return queries.fetch_all(conn, "redrive_op_list", params)


def redrive_op_phase(conn: Conn, params: Params = None) -> None:
    """Move an operation to a phase, with the verdict and the reason when there is one."""
    queries.execute(conn, "redrive_op_phase", params)


def redrive_op_progress(conn: Conn, params: Params = None) -> None:
    """Record one committed promotion batch: where the next starts, how many went."""
    queries.execute(conn, "redrive_op_progress", params)


def redrive_op_read(conn: Conn, params: Params = None) -> Row | None:
    """One operation, unlocked (to show it)."""
    return queries.fetch_one(conn, "redrive_op_read", params)


def redrive_op_try_lock(conn: Conn, params: Params = None) -> Any:
    """Session lock on one operation, so that two runners (a CLI --resume and the API) never drive
    it at once; false when someone else holds it."""
    return queries.fetch_value(conn, "redrive_op_try_lock", params)


def redrive_op_unlock(conn: Conn, params: Params = None) -> Any:
    """Release the operation's session lock."""
    return queries.fetch_value(conn, "redrive_op_unlock", params)


def redrive_ordered_batch(conn: Conn, params: Params = None) -> Row | None:
    """One batch of an order-preserving redrive: the next %(batch_size)s dead events of the
    selection after %(after_id)s in id order (only those in %(only)s when set, never those
    in %(exclude)s), back to pending as dead_redrive_ids does, each aggregate's events due
    in their original order (created_at, id): one microsecond apart, so the claim (priority,
    next_attempt_at, id) takes them in that order. Rows another transaction holds are
    skipped (SKIP LOCKED), so fewer picked than asked means nothing unlocked is left.
    Returns picked, the ids redriven and last_id."""
    return queries.fetch_one(conn, "redrive_ordered_batch", params)


def redrive_outcome(conn: Conn, params: Params = None) -> Row | None:
    """How the given redriven events stand: done, dead again, still open (pending or running), gone
    (archived); the failed attempts recorded since %(since)s, and the 90th percentile of
    redrive-to-done seconds. The canary's settle check and the paced redrive's health
    sample."""
    return queries.fetch_one(conn, "redrive_outcome", params)


def redrive_plan_conflicts(conn: Conn, params: Params = None) -> Row | None:
    """What a redrive of the selection would run into: an event whose idempotency key a newer event
    holds (live or archived: the live unique index leaves only archived or re-published
    holders), and an event whose aggregate moved on (a newer event of the same aggregate is
    done). Counts, and the first ids of each. One hash join over the outbox, not a lookup
    per dead event."""
    return queries.fetch_one(conn, "redrive_plan_conflicts", params)


def redrive_plan_groups(conn: Conn, params: Params = None) -> list[Row]:
    """The selection counted per error fingerprint, event type, destination and age bucket, in one
    scan (GROUPING SETS). The destination is read through to_jsonb(e) so that this query
    runs before and after the per-destination dead letters add the column (NULL until then)."""
    return queries.fetch_all(conn, "redrive_plan_groups", params)


def redrive_plan_totals(conn: Conn, params: Params = None) -> Row | None:
    """The selection: how many, how many --max-replays leaves out, oldest and newest death."""
    return queries.fetch_one(conn, "redrive_plan_totals", params)


def redrive_plan_total(conn: Conn, params: Params = None) -> Any:
    """The first column of redrive_plan_totals: how many dead events a redrive would take."""
    return queries.fetch_value(conn, "redrive_plan_totals", params)
