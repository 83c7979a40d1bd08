"""Delivery-control statements (sql/queries/delivery.sql, delivery_order.sql): circuit
breakers, rate limits, backlog limits, ordering, expiry and checksums."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatchbox.data import queries
from dispatchbox.filters import DeadEventFilter

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]


def breaker_list(conn: Conn) -> list[Row]:
    """Every destination's circuit breaker, as stored."""
    return queries.fetch_all(conn, "breaker_list")


def breaker_lock(conn: Conn, destination: str) -> Row | None:
    """Lock a destination's breaker row for a change by hand; None when there is none."""
    return queries.fetch_one(conn, "breaker_lock", {"destination": destination})


def breaker_open_manual(conn: Conn, destination: str) -> Row | None:
    """Open the breaker by hand; None when an operator had already opened it."""
    return queries.fetch_one(conn, "breaker_open_manual", {"destination": destination})


def breaker_close_manual(conn: Conn, destination: str) -> Row | None:
    """Close an open or half-open breaker; None when it was already closed."""
    return queries.fetch_one(conn, "breaker_close_manual", {"destination": destination})


def breaker_reset(conn: Conn, destination: str) -> None:
    """Closed, with its counters, cool-down and outage forgotten."""
    queries.execute(conn, "breaker_reset", {"destination": destination})


def breaker_states(conn: Conn, destinations: list[str]) -> list[Row]:
    """The state of these destinations' breakers."""
    return queries.fetch_all(conn, "breaker_states", {"destinations": destinations})


async def abreaker_states(conn: AsyncConn, destinations: list[str]) -> list[Row]:
    return await queries.afetch_all(conn, "breaker_states", {"destinations": destinations})


async def breaker_ensure(conn: AsyncConn, params: dict[str, Any]) -> None:
    """Create a destination's breaker with its policy, or update the policy."""
    await queries.aexecute(conn, "breaker_ensure", params)


async def rate_limit_ensure(
    conn: AsyncConn, destination: str, per_second: float | None, burst: float
) -> None:
    """Create or update a destination's token bucket."""
    params = {"destination": destination, "per_second": per_second, "burst": burst}
    await queries.aexecute(conn, "rate_limit_ensure", params)


async def rate_limit_drop(conn: AsyncConn, destinations: list[str]) -> None:
    """Forget the token buckets of these destinations (no longer rate limited)."""
    await queries.aexecute(conn, "rate_limit_drop", {"destinations": destinations})


async def claim(conn: AsyncConn, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Claim a destination's due events within its rate limit (binary tuples, the hot path)."""
    return await queries.afetch_tuples(conn, "delivery_claim", params, binary=True)


async def breaker_record(conn: AsyncConn, params: dict[str, Any]) -> list[Row]:
    """Add a flush's calls, failures and successes to the breakers; each touched breaker."""
    return await queries.afetch_all(conn, "breaker_record", params)


async def breaker_take_probe(
    conn: AsyncConn, destinations: list[str], *, worker: str, lease_seconds: float
) -> list[Row]:
    """Take the probe of each of these breakers that is due for one."""
    params = {"destinations": destinations, "worker": worker, "lease_seconds": lease_seconds}
    return await queries.afetch_all(conn, "breaker_take_probe", params)


async def breaker_probe_result(
    conn: AsyncConn, destination: str, *, worker: str, healthy: bool, error: str | None
) -> list[Row]:
    """Record a probe's result: the breaker closes or opens again."""
    params = {"destination": destination, "worker": worker, "healthy": healthy, "error": error}
    return await queries.afetch_all(conn, "breaker_probe_result", params)


async def replay_candidates(conn: AsyncConn, params: dict[str, Any]) -> list[Row]:
    """The next page of events a closed breaker's replay considers."""
    return await queries.afetch_all(conn, "replay_candidates", params)


def backlog_read(conn: Conn) -> dict[str, int]:
    """The last counted pending events per registered event type."""
    return {r["event_type"]: int(r["pending"]) for r in queries.fetch_all(conn, "backlog_read")}


def backlog_register(conn: Conn, event_types: list[str]) -> None:
    """Ask the workers to count these event types' pending events too."""
    queries.execute(conn, "backlog_register", {"event_types": event_types})


async def backlog_refresh(conn: AsyncConn, interval: float) -> int:
    """Recount the registered types if the count is older than ``interval`` seconds; how many
    types were recounted."""
    rows = await queries.afetch_tuples(conn, "backlog_refresh", {"interval": interval})
    return int(rows[0][0])


async def db_clock(conn: AsyncConn) -> Any:
    """The database's clock (a timestamptz)."""
    rows = await queries.afetch_tuples(conn, "expiry_db_clock")
    return rows[0][0]


async def ordering_park(conn: AsyncConn, ids: list[int], park: list[str]) -> list[tuple[int, int]]:
    """Park the later events of these dead events' aggregates; (parked id, blocker id) pairs."""
    rows = await queries.afetch_tuples(conn, "ordering_park", {"ids": ids, "park": park})
    return [(int(r[0]), int(r[1])) for r in rows]


def blocked_aggregates(conn: Conn) -> Row:
    """Aggregates held behind a failing event: waiting and parked counts."""
    row = queries.fetch_one(conn, "ordering_blocked_aggregates")
    assert row is not None
    return row


def checksum_mismatched(conn: Conn, ids: list[int]) -> list[int]:
    """Those of these events whose payload no longer matches its checksum."""
    return [int(r["id"]) for r in queries.fetch_all(conn, "checksum_mismatch_ids", {"ids": ids})]


def checksum_mismatched_dead(conn: Conn, flt: DeadEventFilter, limit: int) -> list[int]:
    """Dead events matching the filter whose payload no longer matches (at most ``limit``)."""
    params = {**flt.params(), "limit": limit}
    return [int(r["id"]) for r in queries.fetch_all(conn, "checksum_mismatch_dead", params)]
