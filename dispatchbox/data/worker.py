"""The worker's statements: its session, claim, complete, fail, release, defer, heartbeat, reap,
listen, the breakers' replay take; the records they return (Claimed, Failure, Transition); and
the worker's connections (data.connection's self-reopening one, set up for the worker).

Every statement guards on the state it expects and, for running rows, on the lease token, so a
worker whose lease was taken over cannot change the newer owner's row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.data.connection import AsyncReconnectingConnection
from dispatchbox.events import EventStatus

AsyncConn = psycopg.AsyncConnection[Any]


def worker_connection(
    dsn: str, *, prepare: bool, role: str, synchronous_commit: bool = True
) -> AsyncReconnectingConnection:
    """One of a worker process's connections (claim, flush, upkeep, listen, delivery), which
    reopens itself after an outage."""
    # Only this session's commits: the worker's own state changes. A completion lost in a crash
    # means the event is delivered again, which at-least-once allows.
    settings = None if synchronous_commit else {"synchronous_commit": "off"}
    return AsyncReconnectingConnection(
        dsn,
        application_name=f"dispatchbox-worker-{role}",
        prepare=prepare,
        settings=settings,
        on_connect=_session_utc,
    )


async def _session_utc(conn: AsyncConn) -> None:
    # Timestamps arrive in UTC whatever the server's TimeZone: psycopg converts a timestamptz to
    # UTC several times faster than to a named zone (0.2 against 0.6 us a value, two per claimed
    # event). A SET rather than a startup option, which PgBouncer refuses; PgBouncer keeps
    # TimeZone per client.
    await queries.aexecute(conn, "worker_session_utc")


async def listen(conn: AsyncConn) -> None:
    """LISTEN for the insert trigger's notification on this connection."""
    await queries.aexecute(conn, "worker_listen")


async def take_replay(conn: AsyncConn, destinations: Sequence[str]) -> list[dict[str, Any]]:
    """Take the replay requests of these destinations' breakers (breaker_take_replay)."""
    return await queries.afetch_all(
        conn, "breaker_take_replay", {"destinations": list(destinations)}
    )


@dataclass(slots=True)
class Claimed:
    """One claimed event, as the claim returned it (payload still JSON text)."""

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: str
    headers: str
    attempts: int
    created_at: datetime
    position: int  # 1-based place in its claim, most urgent first
    priority: int
    next_attempt_us: int  # next_attempt_at, microseconds since the epoch: with priority and id,
    # the event's place in the claim order
    expires_at: datetime | None  # publish(expires_at=...): undelivered then, it goes dead
    # Crashes this event was held through (its worker died): a suspect when > 0.
    crash_attempts: int
    token: uuid.UUID


@dataclass(slots=True)
class Failure:
    id: int
    token: uuid.UUID
    error_type: str
    message: str
    traceback: str | None
    started: float  # time.monotonic() when the handler started
    finished: float  # and when it ended (or was given up on)
    permanent: bool
    delay: float  # seconds until the next attempt, if one is left
    destination: str | None = None  # the handler's destination, kept on the row (dead letters)


@dataclass(frozen=True, slots=True)
class Transition:
    """An event that a fail or reap statement moved, as it now stands."""

    id: int
    status: str
    attempts: int
    event_type: str
    aggregate_type: str
    locked_by: str | None = None
    destination: str | None = None  # where its last recorded failure was (migration 0007)


async def claim(
    conn: AsyncConn,
    *,
    worker: str,
    limit: int,
    lease_seconds: float,
    after: Sequence[tuple[int, int] | None] | None = None,
    excluded_types: Sequence[str] = (),
    ordered: dict[str, list[str]] | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due events, most urgent first, none of ``excluded_types`` (see
    DeliveryBoard): from the start of the claim order, or, given ``after`` (a place per priority
    1-10: next_attempt_us and id, None where there is none), resumed after each priority's place
    (see worker_claim_after). ``ordered`` (delivery.ordering.OrderingPlan.params): the ordered
    claim instead, serialised across processes by a transaction-scoped lock, from the start."""
    token = uuid.uuid4()
    params: dict[str, Any] = {
        "worker": worker,
        "limit": limit,
        "lease_seconds": lease_seconds,
        "token": token,
        "excluded_types": list(excluded_types),
    }
    # binary: a timestamp per row is cheaper for the server and for us
    if ordered is not None:
        async with conn.transaction():
            await queries.aexecute(conn, "ordering_claim_lock")
            rows = await queries.afetch_tuples(
                conn, "worker_claim_ordered", {**params, **ordered}, binary=True
            )
    elif after is not None:
        params["after_us"] = [p[0] if p else None for p in after]
        params["after_ids"] = [p[1] if p else None for p in after]
        rows = await queries.afetch_tuples(conn, "worker_claim_after", params, binary=True)
    else:
        rows = await queries.afetch_tuples(conn, "worker_claim", params, binary=True)
    return claimed_rows(rows, token)


def claimed_rows(rows: list[tuple[Any, ...]], token: uuid.UUID) -> list[Claimed]:
    """Claimed events from rows with worker_claim's columns (every claim returns them)."""
    rows.sort(key=_POSITION)  # claim order; the statement returns it so already (linear then)
    # The row's columns are Claimed's fields but the token, in order: unpacking them is the
    # cheapest way to build one, and this runs once per claimed event.
    return [Claimed(*r, token) for r in rows]  # type: ignore[call-arg]  # thirteen columns


_POSITION = itemgetter(8)


def array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of ints or UUIDs (whose text needs no quoting), for a
    parameter cast to bigint[] or uuid[]: psycopg adapts a list element by element in Python
    (0.8 ms per 1,000 ids); one join is 0.1 ms. Only for values whose str() is their literal."""
    return "{" + ",".join(map(str, values)) + "}"


def _guard_params(ids: list[int], tokens: Iterable[uuid.UUID]) -> dict[str, str]:
    # The statements match tokens as a set (see worker_complete): send each token once, not
    # once per event. The events of one claim share one UUID object, so deduplicating by
    # identity is enough, and cheaper than UUID.__hash__ (Python code) per event.
    return {
        "ids": array_literal(ids),
        "tokens": array_literal({id(t): t for t in tokens}.values()),
    }


def _pairs(items: Sequence[tuple[int, uuid.UUID]]) -> dict[str, str]:
    return _guard_params([i for i, _ in items], (t for _, t in items))


async def complete(conn: AsyncConn, items: Sequence[Claimed]) -> int:
    """Mark done; returns how many rows were still ours."""
    if not items:
        return 0
    params = _guard_params([item.id for item in items], (item.token for item in items))
    return await queries.aexecute(conn, "worker_complete", params)


async def fail(conn: AsyncConn, *, worker: str, failures: Sequence[Failure]) -> list[Transition]:
    """Record failed attempts; returns the events that went dead."""
    if not failures:
        return []
    now = time.monotonic()  # just before the statement's now(): the times' anchor
    params = {
        "worker": worker,
        "ids": [f.id for f in failures],
        "tokens": [f.token for f in failures],
        "error_types": [f.error_type for f in failures],
        "messages": [f.message for f in failures],
        "tracebacks": [f.traceback for f in failures],
        "started_ago": [max(0.0, now - f.started) for f in failures],
        "finished_ago": [max(0.0, now - f.finished) for f in failures],
        "permanent": [f.permanent for f in failures],
        "delays": [f.delay for f in failures],
        "destinations": [f.destination for f in failures],
    }
    rows = await queries.afetch_tuples(conn, "worker_fail", params)
    return [Transition(*row) for row in rows if row[1] == EventStatus.DEAD]


async def release(conn: AsyncConn, items: Sequence[tuple[int, uuid.UUID]]) -> int:
    """Give back unstarted events without counting an attempt."""
    if not items:
        return 0
    return await queries.aexecute(conn, "worker_release", _pairs(items))


async def defer(conn: AsyncConn, items: Sequence[tuple[int, uuid.UUID]], *, seconds: float) -> int:
    """Give back claimed, unstarted events without counting an attempt, due in ``seconds``."""
    if not items:
        return 0
    return await queries.aexecute(conn, "worker_defer", {**_pairs(items), "seconds": seconds})


async def heartbeat(
    conn: AsyncConn, items: Sequence[tuple[int, uuid.UUID]], *, lease_seconds: float
) -> int:
    if not items:
        return 0
    return await queries.aexecute(
        conn, "worker_heartbeat", {**_pairs(items), "lease_seconds": lease_seconds}
    )


async def reap(
    conn: AsyncConn, *, limit: int = 1000, max_crashes: int = 3, crash_backoff: float = 1.0
) -> list[Transition]:
    """Take back events whose lease expired: a crash attempt each (not an error attempt), dead
    as poison at ``max_crashes`` (0: never); returns what moved (pending or dead)."""
    params = {"limit": limit, "max_crashes": max_crashes, "crash_backoff": crash_backoff}
    rows = await queries.afetch_tuples(conn, "reaper_expire", params)
    return [Transition(*row) for row in rows]
