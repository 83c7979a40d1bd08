"""Claims that resume after the last place claimed: same events, same order, and no walk over
the dead index entries a held snapshot leaves behind (dispatchbox/worker/claim_position.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from dispatchbox import publish, publish_many
from dispatchbox.data import queries
from dispatchbox.data import worker as store
from dispatchbox.worker.claim_position import ClaimPositions

EVENT = {"aggregate_type": "order", "aggregate_id": "1", "event_type": "e", "payload": {}}


async def claim(
    conn: psycopg.AsyncConnection[Any], positions: ClaimPositions, limit: int, now: float
) -> list[store.Claimed]:
    after = positions.after(now)
    batch = await store.claim(conn, worker="A", limit=limit, lease_seconds=60, after=after)
    positions.claimed(batch, full=after is None, started=now)
    return batch


def test_resumed_claims_take_the_same_events_in_the_same_order(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        ids = publish_many(conn, [{**EVENT, "priority": 1 + i % 3} for i in range(90)])
        expected = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM outbox_event ORDER BY priority, next_attempt_at, id"
            )
        ]

    async def scenario() -> tuple[list[int], list[bool]]:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        positions = ClaimPositions()
        got: list[int] = []
        resumed: list[bool] = []
        for _ in range(10):
            resumed.append(positions.after(0.0) is not None)
            got += [c.id for c in await claim(conn, positions, 10, 0.0)]
        await conn.close()
        return got, resumed

    got, resumed = asyncio.run(scenario())
    assert sorted(ids) == sorted(got) and got == expected
    # only the first claim started from the beginning (no time passed for another)
    assert resumed == [False] + [True] * 9


def test_a_more_urgent_event_is_claimed_by_a_resumed_claim(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        publish_many(conn, [EVENT] * 20)  # priority 5

    async def scenario() -> list[int]:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        positions = ClaimPositions()
        await claim(conn, positions, 10, 0.0)
        with psycopg.connect(db_dsn) as sync:
            urgent = publish(sync, **EVENT, priority=1)
        assert positions.after(0.0) is not None
        second = await claim(conn, positions, 5, 0.0)
        await conn.close()
        assert second[0].id == urgent
        return [c.priority for c in second]

    assert asyncio.run(scenario()) == [1, 5, 5, 5, 5]


def test_an_event_behind_the_place_waits_for_the_next_claim_from_the_start(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        publish_many(conn, [EVENT] * 10)

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        positions = ClaimPositions()
        await claim(conn, positions, 5, 0.0)
        # as a transaction that began before the claim and committed after it would leave it
        with psycopg.connect(db_dsn) as sync:
            late = publish(sync, **EVENT, available_at=datetime(2020, 1, 1, tzinfo=UTC))
        resumed = await claim(conn, positions, 10, 0.0)
        assert late not in [c.id for c in resumed] and len(resumed) == 5
        # The full claim is due once the share of time since the last one has passed.
        later = 1e6
        assert positions.after(later) is None
        (found,) = await claim(conn, positions, 10, later)
        assert found.id == late
        await conn.close()

    asyncio.run(scenario())


def _buffers(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> int:
    conn.execute("BEGIN")
    plan = conn.execute(
        b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + queries.query(name), params
    ).fetchone()
    conn.execute("ROLLBACK")
    assert plan is not None
    # The claim index's scan inside the claim (every loop of it): its buffers alone, not the
    # row locks' or the update's, which are the same for both statements.
    scans = [
        n for n in _nodes(plan[0][0]["Plan"]) if n.get("Index Name") == "outbox_event_claim_idx"
    ]
    assert scans
    return sum(int(n["Shared Hit Blocks"]) + int(n.get("Shared Read Blocks", 0)) for n in scans)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


def test_under_a_held_snapshot_a_resumed_claim_does_not_walk_the_dead(db_dsn: str) -> None:
    holder = psycopg.connect(db_dsn)
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1").fetchone()  # takes the snapshot
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type) "
                "SELECT 'order', g::text, 'e' FROM generate_series(1, 30000) g"
            )

            async def drain() -> tuple[int, int]:
                aconn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
                positions = ClaimPositions()
                for _ in range(25):
                    batch = await claim(aconn, positions, 1000, 0.0)
                    await store.complete(aconn, batch)
                await aconn.close()
                return batch[-1].next_attempt_us, batch[-1].id

            place = asyncio.run(drain())
            common = {
                "worker": "B",
                "limit": 100,
                "lease_seconds": 60,
                "token": uuid.uuid4(),
                "excluded_types": [],
            }
            full = _buffers(conn, "worker_claim", common)
            after: list[tuple[int, int] | None] = [None] * 10
            after[4] = place
            resumed = _buffers(
                conn,
                "worker_claim_after",
                {
                    **common,
                    "after_us": [p[0] if p else None for p in after],
                    "after_ids": [p[1] if p else None for p in after],
                },
            )
        # 25,000 claimed events left dead entries a claim from the start must read past (149
        # buffers here); the resumed claim reads a descent per priority and its 100 rows (13).
        assert full > 8 * resumed and resumed < 40, (full, resumed)
    finally:
        holder.close()
