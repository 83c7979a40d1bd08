"""The worker's SQL: claims, lease guards, the reaper, release, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository, publish, publish_many
from dispatchbox.data import queries
from dispatchbox.data import worker as store

EVENT = {"aggregate_type": "order", "aggregate_id": "1", "event_type": "e", "payload": {}}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def aconn(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


def test_stale_worker_cannot_complete_or_fail_an_event_taken_over(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT)

    async def scenario() -> None:
        a = await aconn(db_dsn)
        b = await aconn(db_dsn)
        (mine,) = await store.claim(a, worker="A", limit=10, lease_seconds=60)
        # A stalls; its lease runs out (back-dated here) and the reaper hands the event on.
        await a.execute(
            "UPDATE outbox_event SET locked_until = now() - interval '1 second' WHERE id = %s",
            [event_id],
        )
        reaped = await store.reap(b, crash_backoff=0)
        assert [(t.id, t.status, t.locked_by) for t in reaped] == [(event_id, "pending", "A")]
        (theirs,) = await store.claim(b, worker="B", limit=10, lease_seconds=60)
        assert theirs.attempts == 1 and theirs.token != mine.token

        stale = [(mine.id, mine.token)]
        assert await store.complete(a, [mine]) == 0
        assert await store.heartbeat(a, stale, lease_seconds=60) == 0
        assert await store.release(a, stale) == 0
        failure = store.Failure(
            id=mine.id,
            token=mine.token,
            error_type="X",
            message="late",
            traceback=None,
            started=time.monotonic(),
            finished=time.monotonic(),
            permanent=True,
            delay=0,
        )
        assert await store.fail(a, worker="A", failures=[failure]) == []
        row = await (
            await b.execute("SELECT status, locked_by FROM outbox_event WHERE id = %s", [event_id])
        ).fetchone()
        assert row == ("running", "B")

        assert await store.complete(b, [theirs]) == 1
        await a.close()
        await b.close()

    run(scenario())
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute(
            "SELECT status, attempts, lease_token FROM outbox_event WHERE id = %s", [event_id]
        ).fetchone() == ("done", 1, None), "the crash took back its attempt"
        errors = conn.execute(
            "SELECT attempt, worker, error_type FROM outbox_event_error WHERE event_id = %s",
            [event_id],
        ).fetchall()
    assert errors == [(1, "A", "LeaseExpired")]


def test_failure_history_times_are_the_database_clock_at_the_monotonic_readings(
    db_dsn: str,
) -> None:
    # The worker sends how long ago (monotonic clock) a handler started and ended; the history
    # row must hold those instants on the database's clock, whatever the client's wall clock.
    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT)
        conn.commit()

    async def scenario() -> None:
        conn = await aconn(db_dsn)
        (item,) = await store.claim(conn, worker="A", limit=10, lease_seconds=60)
        now = time.monotonic()
        failure = store.Failure(
            id=item.id,
            token=item.token,
            error_type="X",
            message="boom",
            traceback=None,
            started=now - 30.0,
            finished=now - 10.0,
            permanent=False,
            delay=0,
        )
        await store.fail(conn, worker="A", failures=[failure])
        await conn.close()

    run(scenario())
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - started_at), extract(epoch FROM now() - finished_at)"
            " FROM outbox_event_error WHERE event_id = %s",
            [event_id],
        ).fetchone()
    assert row is not None
    started_ago, finished_ago = float(row[0]), float(row[1])
    assert 30.0 <= started_ago < 35.0
    assert 10.0 <= finished_ago < 15.0


def test_claim_order_priority_then_due_time_and_skip_locked(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        low = publish(conn, **EVENT, priority=9)
        high = publish(conn, **EVENT, priority=1)
        mid = publish_many(conn, [{**EVENT, "priority": 5}] * 3)
        publish(conn, **EVENT, priority=1, available_at=datetime(2999, 1, 1, tzinfo=UTC))

    async def scenario() -> None:
        a = await aconn(db_dsn)
        b = await aconn(db_dsn)
        first = await store.claim(a, worker="A", limit=2, lease_seconds=60)
        assert [c.id for c in first] == [high, mid[0]]
        # A second claimer, inside a transaction that holds row locks of its own, skips them.
        async with b.transaction():
            await b.execute("SELECT 1 FROM outbox_event WHERE id = %s FOR UPDATE", [mid[1]])
            second = await store.claim(a, worker="A", limit=10, lease_seconds=60)
            assert [c.id for c in second] == [mid[2], low]
        await a.close()
        await b.close()

    run(scenario())


def test_a_claim_comes_back_in_claim_order_not_id_order(db_dsn: str) -> None:
    # Ids ascend while urgency descends, and due times cut across priorities: the rows must
    # come back most urgent first, numbered by position, whatever order the update met them.
    with psycopg.connect(db_dsn) as conn:
        ids = [
            publish(
                conn,
                **EVENT,
                priority=10 - (i % 10),
                available_at=datetime(2020, 1, 1, tzinfo=UTC) - timedelta(minutes=i % 7),
            )
            for i in range(200)
        ]
        expected = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM outbox_event WHERE id = ANY(%s) "
                "ORDER BY priority, next_attempt_at, id",
                [ids],
            )
        ]

    async def scenario() -> list[store.Claimed]:
        a = await aconn(db_dsn)
        claimed = await store.claim(a, worker="A", limit=150, lease_seconds=60)
        claimed += await store.claim(a, worker="A", limit=150, lease_seconds=60)
        await a.close()
        return claimed

    claimed = run(scenario())
    assert [c.id for c in claimed] == expected
    assert [c.position for c in claimed] == list(range(1, 151)) + list(range(1, 51))


def test_release_gives_back_without_counting_the_attempt(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        publish_many(conn, [EVENT] * 3)

    async def scenario() -> None:
        a = await aconn(db_dsn)
        claimed = await store.claim(a, worker="A", limit=3, lease_seconds=60)
        assert await store.release(a, [(c.id, c.token) for c in claimed]) == 3
        await a.close()

    run(scenario())
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT status, attempts, locked_by FROM outbox_event").fetchall()
    assert rows == [("pending", 0, None)] * 3


def test_reaper_counts_a_crash_apart_and_dead_letters_poison_at_max_crashes(
    db_dsn: str,
) -> None:
    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT, max_attempts=1)

    async def crash(a: psycopg.AsyncConnection[Any], worker: str) -> list[store.Transition]:
        await a.execute(  # due at once (the crash backoff would wait), and claimed
            "UPDATE outbox_event SET next_attempt_at = now() WHERE id = %s", [event_id]
        )
        await a.commit()
        await store.claim(a, worker=worker, limit=1, lease_seconds=60)
        await a.execute(  # the lease ran out (back-dated, rather than waited out)
            "UPDATE outbox_event SET locked_until = now() - interval '1 second' WHERE id = %s",
            [event_id],
        )
        await a.commit()
        return await store.reap(a, max_crashes=3, crash_backoff=0)

    async def scenario() -> None:
        a = await aconn(db_dsn)
        # max_attempts is 1, yet two crashes leave the event pending with no attempt spent.
        for worker in ("A", "B"):
            (moved,) = await crash(a, worker)
            assert (moved.id, moved.status) == (event_id, "pending")
        (moved,) = await crash(a, "C")
        assert (moved.id, moved.status) == (event_id, "dead")
        await a.close()

    run(scenario())
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT status, attempts, crash_attempts, dead_at IS NOT NULL,"
            " last_error LIKE 'Poison: %%3 times%%held by C)' FROM outbox_event WHERE id = %s",
            [event_id],
        ).fetchone()
        history = conn.execute(
            "SELECT worker, error_type FROM outbox_event_error WHERE event_id = %s ORDER BY id",
            [event_id],
        ).fetchall()
    assert row == ("dead", 0, 3, True, True)
    assert history == [("A", "LeaseExpired"), ("B", "LeaseExpired"), ("C", "Poison")]


def test_a_redrive_gives_a_poison_event_a_fresh_crash_budget(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT)
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', dead_at = now(), crash_attempts = 3,"
            " last_error = 'Poison: x' WHERE id = %s",
            [event_id],
        )
        conn.commit()
    assert OutboxRepository(db_dsn).retry_dead_event(event_id)
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT status, crash_attempts FROM outbox_event WHERE id = %s", [event_id]
        ).fetchone()
    assert row == ("pending", 0)


def _plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> str:
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + queries.query(name), params).fetchone()
    assert row is not None
    return json.dumps(row[0])


def test_claim_and_complete_plans_are_key_lookups(db_dsn: str) -> None:
    """Guards the plans that made the drain 15x faster: no seq scan, no hash of the table, no
    nested loop over the partial lease index when its statistics are stale."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        publish_many(conn, [EVENT] * 20_000)
        conn.execute("ANALYZE outbox_event")  # statistics say: nothing is running
        token = uuid.uuid4()
        conn.execute(
            "UPDATE outbox_event SET status = 'running', lease_token = %s, "
            "locked_until = now() + interval '1 minute' WHERE id <= 1000",
            [token],
        )
        claim = _plan(
            conn,
            "worker_claim",
            {
                "worker": "w",
                "limit": 1000,
                "lease_seconds": 60,
                "token": uuid.uuid4(),
                "excluded_types": [],
            },
        )
        ids = list(range(1, 1001))
        complete = _plan(conn, "worker_complete", {"ids": ids, "tokens": [token] * 1000})
        heartbeat = _plan(
            conn, "worker_heartbeat", {"ids": ids, "tokens": [token] * 1000, "lease_seconds": 60}
        )
    assert "outbox_event_claim_idx" in claim and "outbox_event_pkey" in claim
    assert "Seq Scan" not in claim and "Hash" not in claim
    assert "outbox_event_pkey" in complete
    assert "outbox_event_lease_idx" not in complete and "Seq Scan" not in complete
    assert "outbox_event_pkey" in heartbeat and "Seq Scan" not in heartbeat


@pytest.mark.parametrize("limit", [1, 7])
def test_claim_respects_the_limit(db_dsn: str, limit: int) -> None:
    with psycopg.connect(db_dsn) as conn:
        publish_many(conn, [EVENT] * 10)

    async def scenario() -> int:
        a = await aconn(db_dsn)
        claimed = await store.claim(a, worker="A", limit=limit, lease_seconds=60)
        await a.close()
        return len(claimed)

    assert run(scenario()) == limit


def test_synchronous_commit_off_applies_to_the_workers_sessions_only(db_dsn: str) -> None:
    from dispatchbox.data.connection import AsyncReconnectingConnection as Connection
    from dispatchbox.data.worker import worker_connection

    async def setting(conn: Connection) -> tuple[str, str]:
        c = await conn.get()
        row = await (
            await c.execute(
                "SELECT current_setting('synchronous_commit'), application_name "
                "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
        ).fetchone()
        await conn.close()
        assert row is not None
        return row[0], row[1]

    off = run(
        setting(worker_connection(db_dsn, prepare=True, role="claim", synchronous_commit=False))
    )
    on = run(setting(worker_connection(db_dsn, prepare=True, role="flush")))
    assert off == ("off", "dispatchbox-worker-claim")
    assert on == ("on", "dispatchbox-worker-flush")
    with psycopg.connect(db_dsn) as conn:  # anyone else's session keeps the server's default
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_claimed_timestamps_are_utc_whatever_the_servers_time_zone(db_dsn: str) -> None:
    # The worker's sessions set TimeZone to UTC (fast timestamp decoding); handlers get
    # created_at in UTC, the same instant the database stored, on a server set to another zone.
    from dispatchbox.data.worker import worker_connection
    from dispatchbox.worker import decode

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'").format(
                psycopg.sql.Identifier(dbname)
            )
        )
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Kolkata",)
        event_id = publish(conn, **EVENT)
        row = conn.execute(
            "SELECT created_at FROM outbox_event WHERE id = %s", [event_id]
        ).fetchone()
        assert row is not None
        stored = row[0]
        conn.commit()

    async def scenario() -> store.Claimed:
        conn = worker_connection(db_dsn, prepare=True, role="claim")
        (item,) = await store.claim(await conn.get(), worker="A", limit=10, lease_seconds=60)
        await conn.close()
        return item

    item = run(scenario())
    event = decode.event(item)
    assert event.created_at is not None
    assert event.created_at.utcoffset() == timedelta(0)
    assert event.created_at == stored  # the same instant, shown in UTC
    assert stored.utcoffset() == timedelta(hours=5, minutes=30)
