"""The breaker's state machine in SQL (sql/queries/delivery.sql), the operator's actions and their
audit, and the token bucket, on a real PostgreSQL. Several sessions stand for several workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from dispatchbox import BreakerPolicy, Dispatcher, OutboxEvent, publish_many
from dispatchbox.data import queries
from dispatchbox.delivery import admin
from dispatchbox.delivery.board import DeliveryBoard
from dispatchbox.delivery.config import DestinationConfig, is_transient
from dispatchbox.delivery.replay import replayable


def app(**destination: Any) -> Dispatcher:
    d = Dispatcher()
    d.destination("ledger", **destination)

    @d.handler("ledger.post", destination="ledger")
    def post(event: OutboxEvent) -> None: ...

    return d


async def board_for(dsn: str, dispatcher: Dispatcher, worker: str) -> tuple[DeliveryBoard, Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    board = DeliveryBoard(dispatcher, worker=worker, probe_lease=10)
    await board.ensure(conn)
    return board, conn


def state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = queries.fetch_all(conn, "breaker_list")
    return rows[0]


async def cooled_down(dsn: str, timeout: float = 10.0) -> None:
    """Until the database's clock passes the breaker's open_until: its cool-down is over and a
    refresh may take the half-open probe. Polled, so the test waits no longer than it must."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT bool_and(now() >= open_until) FROM outbox_breaker"
            ).fetchone()
        if row is not None and row[0]:
            return
        assert time.monotonic() < deadline, "the breaker's cool-down did not end"
        await asyncio.sleep(0.02)


def test_consecutive_failures_from_two_workers_add_up_and_open_it(db_dsn: str) -> None:
    async def go() -> None:
        d = app(breaker=BreakerPolicy(failures=5, failure_rate=None, cooldown=60))
        a, ca = await board_for(db_dsn, d, "A")
        b, cb = await board_for(db_dsn, d, "B")
        fail = ("ledger.post", False, "ConnectionRefusedError: refused")
        assert await a.record(ca, [], [fail, fail]) == []
        assert await b.record(cb, [], [fail, fail]) == []
        assert state(db_dsn)["consecutive_failures"] == 4
        # A success anywhere resets the run of failures.
        await a.record(ca, ["ledger.post"], [])
        assert state(db_dsn)["consecutive_failures"] == 0
        await a.record(ca, [], [fail] * 4)
        (change,) = await b.record(cb, [], [fail])
        assert (change.old_state, change.state) == ("closed", "open")
        assert b.excluded() == ["ledger.post"] and "ledger.post" in b.paused_types
        # A learns at its next flush, whatever it flushes.
        (seen,) = await a.record(ca, [], [fail])
        assert seen.state == "open"
        # A permanent error is the event's fault, not the destination's: not counted.
        before = state(db_dsn)["transitions"]
        await a.record(ca, [], [("ledger.post", True, "PermanentError: bad")])
        assert state(db_dsn)["transitions"] == before
        await ca.close()
        await cb.close()

    asyncio.run(go())


def test_failure_rate_over_the_window_opens_it(db_dsn: str) -> None:
    async def go() -> None:
        d = app(breaker=BreakerPolicy(failures=100, failure_rate=0.5, min_calls=10))
        a, ca = await board_for(db_dsn, d, "A")
        fail = ("ledger.post", False, "TimeoutError: slow")
        # Alternating: never 100 in a row, but half of the calls fail.
        for _ in range(4):
            assert await a.record(ca, ["ledger.post"], [fail]) == []
        (change,) = await a.record(ca, ["ledger.post"], [fail])
        assert change.state == "open"
        await ca.close()

    asyncio.run(go())


def test_half_open_probe_is_taken_once_and_health_decides(db_dsn: str) -> None:
    healthy = {"now": False}

    def check() -> bool:
        return healthy["now"]

    async def go() -> None:
        d = app(
            breaker=BreakerPolicy(failures=1, cooldown=0.2, max_cooldown=10), health_check=check
        )
        a, ca = await board_for(db_dsn, d, "A")
        b, cb = await board_for(db_dsn, d, "B")
        await a.record(ca, [], [("ledger.post", False, "ConnectionError: down")])
        await cooled_down(db_dsn)
        # Both look; exactly one takes the probe (the health check fails: open again).
        await asyncio.gather(a.refresh(ca), b.refresh(cb))
        row = state(db_dsn)
        assert row["state"] == "open" and row["reopens"] == 1
        # The cool-down doubled: 0.4 s now.
        assert (row["open_until"] - row["changed_at"]).total_seconds() == pytest.approx(
            0.4, abs=0.05
        )
        healthy["now"] = True
        await cooled_down(db_dsn)
        await a.refresh(ca)
        await b.refresh(cb)
        assert state(db_dsn)["state"] == "closed"
        assert a.excluded() == [] or b.excluded() == []
        await ca.close()
        await cb.close()

    asyncio.run(go())


def _make(db_dsn: str) -> None:
    async def go() -> None:
        _, conn = await board_for(db_dsn, app(), "A")
        await conn.close()

    asyncio.run(go())


def test_operator_open_close_reset_are_audited_and_wrong_states_refused(db_dsn: str) -> None:
    _make(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        with pytest.raises(admin.BreakerNotFound):
            admin.open_breaker(conn, "nope", actor="alice")
        with pytest.raises(admin.BreakerStateError, match="already closed"):
            admin.close_breaker(conn, "ledger", actor="alice")
        admin.open_breaker(conn, "ledger", actor="alice")
        with pytest.raises(admin.BreakerStateError, match="already open"):
            admin.open_breaker(conn, "ledger", actor="bob")
        (b,) = admin.list_breakers(conn)
        assert (b.state, b.manual, b.open_until) == ("open", True, None)
        # No probe is ever taken of a breaker an operator opened.
        taken = queries.fetch_all(
            conn,
            "breaker_take_probe",
            {"destinations": ["ledger"], "worker": "w", "lease_seconds": 5},
        )
        assert taken == []
        admin.close_breaker(conn, "ledger", actor="bob")
        admin.reset_breaker(conn, "ledger", actor="carol")
        rows = conn.execute(
            "SELECT actor, action, details->>'destination', details->>'was' "
            "FROM outbox_dead_letter_audit ORDER BY id"
        ).fetchall()
    assert rows == [
        ("alice", "breaker_open", "ledger", "closed"),
        ("bob", "breaker_close", "ledger", "open"),
        ("carol", "breaker_reset", "ledger", "closed"),
    ]


def test_token_bucket_grants_no_more_than_it_holds(db_dsn: str) -> None:
    async def go() -> None:
        d = app(breaker=None, rate_limit=1.0, burst=5)
        a, ca = await board_for(db_dsn, d, "A")
        publish_many(
            psycopg.connect(db_dsn, autocommit=True),
            [
                {
                    "aggregate_type": "o",
                    "aggregate_id": "1",
                    "event_type": "ledger.post",
                    "payload": {},
                }
            ]
            * 20,
        )
        # The ordinary claim leaves rate-limited types alone.
        from dispatchbox.data import worker as store

        assert (
            await store.claim(
                ca, worker="A", limit=50, lease_seconds=60, excluded_types=a.excluded()
            )
            == []
        )
        first = await a.claim_extra(ca, limit=50, lease_seconds=60)
        assert sum(len(rows) for rows, _ in first) == 5  # the burst
        again = await a.claim_extra(ca, limit=50, lease_seconds=60)
        assert sum(len(rows) for rows, _ in again) == 0  # under a token a second later
        await ca.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("ConnectionRefusedError: [Errno 111] Connection refused", True),
        ("HandlerTimeout: handler did not finish within 30s", True),
        ("HTTPStatusError: Server error '503 Service Unavailable'", True),
        ("HTTPStatusError: Client error '429 Too Many Requests'", True),
        ("HTTPStatusError: Client error '404 Not Found'", False),
        ("ValueError: customer id missing", False),
        ("PermanentError: the ledger rejects this entry", False),
    ],
)
def test_transient_classification(error: str, expected: bool) -> None:
    cfg = DestinationConfig("ledger", replay_dead_on_recovery=True)
    assert replayable(cfg, error) is expected
    # A classifier that says yes to everything still never replays a PermanentError.
    always = DestinationConfig("ledger", transient=lambda _: True)
    assert replayable(always, error) is (not error.startswith("PermanentError"))
    assert is_transient("ConnectionError: x")


def test_metrics_show_each_breaker_state_and_transitions(db_dsn: str) -> None:
    from dispatchbox.observability.database_metrics import DatabaseCollector

    _make(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        admin.open_breaker(conn, "ledger", actor="alice")
    collector = DatabaseCollector(db_dsn, cache_seconds=0)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        collector.close()
    (state,) = families["dispatchbox_circuit_state"].samples
    assert state.labels == {"destination": "ledger"} and state.value == 2
    (moved,) = [
        s for s in families["dispatchbox_circuit_transitions"].samples if s.name.endswith("_total")
    ]
    assert moved.value == 1
