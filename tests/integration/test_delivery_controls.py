"""Delivery controls on a real PostgreSQL (issue 14, items 4-7): the ordered claim's semantics
per mode, parking and its undoing by every redrive path, payload checksums against
PostgreSQL's own, backpressure from the backlog estimate."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dispatchbox import (
    BacklogFullError,
    Dispatcher,
    OutboxRepository,
    publish,
    publish_many,
    set_backlog_limit,
)
from dispatchbox.data import queries
from dispatchbox.data import worker as store
from dispatchbox.delivery import backpressure, checksum
from dispatchbox.delivery.ordering import OrderingPlan, blocked_aggregates

Conn = psycopg.Connection[Any]


def _event(agg: str, event_type: str = "o.block", **fields: Any) -> dict[str, Any]:
    return {
        "aggregate_type": "order",
        "aggregate_id": agg,
        "event_type": event_type,
        "payload": fields.pop("payload", {"agg": agg}),
        **fields,
    }


def _plan() -> OrderingPlan:
    d = Dispatcher()
    for mode in ("block", "skip", "park"):
        d.register(f"o.{mode}", lambda e: None, ordering=mode)
    d.register("plain", lambda e: None)
    plan = OrderingPlan.of(d)
    assert plan is not None
    return plan


def _claim(dsn: str, limit: int = 100) -> list[store.Claimed]:
    async def go() -> list[store.Claimed]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await store.claim(
                conn, worker="t", limit=limit, lease_seconds=60, ordered=_plan().params()
            )

    return asyncio.run(go())


def _fail(dsn: str, items: list[store.Claimed], *, delay: float, permanent: bool = False) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            failures = [
                store.Failure(i.id, i.token, "Boom", "boom", None, 0.0, 0.0, permanent, delay)
                for i in items
            ]
            dead = await store.fail(conn, worker="t", failures=failures)
            await _plan().park_behind(conn, [t.id for t in dead])

    asyncio.run(go())


def _complete(dsn: str, items: list[store.Claimed]) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await store.complete(conn, items)

    asyncio.run(go())


def _ids(items: list[store.Claimed]) -> list[int]:
    return sorted(i.id for i in items)


def test_block_claims_only_the_head_of_each_aggregate(db_dsn: str, conn: Conn) -> None:
    a1, a2, b1, p1, p2 = publish_many(
        conn,
        [_event("a"), _event("a"), _event("b"), _event("a", "plain"), _event("a", "plain")],
    )
    conn.commit()
    first = _claim(db_dsn)
    # Unordered types are claimed as usual, in parallel with the aggregate's ordered events.
    assert _ids(first) == [a1, b1, p1, p2]
    assert _claim(db_dsn) == [], "a2 waits while a1 runs"
    head = [i for i in first if i.id == a1]
    _fail(db_dsn, head, delay=0)  # back to pending, due now
    again = _claim(db_dsn)
    assert _ids(again) == [a1], "the failed head comes again, a2 still waits behind it"
    _complete(db_dsn, again)
    assert _ids(_claim(db_dsn)) == [a2]


def test_skip_passes_a_head_waiting_for_its_retry(db_dsn: str, conn: Conn) -> None:
    s1, s2, s3 = publish_many(conn, [_event("s", "o.skip") for _ in range(3)])
    conn.commit()
    (head,) = _claim(db_dsn)
    assert head.id == s1
    _fail(db_dsn, [head], delay=3600)  # retry in an hour
    (second,) = _claim(db_dsn)
    assert second.id == s2, "skip: the next event goes on, one at a time"
    assert _claim(db_dsn) == []
    _complete(db_dsn, [second])
    assert _ids(_claim(db_dsn)) == [s3]


def test_park_parks_behind_a_dead_event_and_a_redrive_brings_them_back(
    db_dsn: str, conn: Conn
) -> None:
    ids = publish_many(conn, [_event("p", "o.park") for _ in range(4)] + [_event("q", "o.park")])
    conn.commit()
    p1, p2, p3, p4, q1 = ids
    first = _claim(db_dsn)
    assert _ids(first) == [p1, q1]
    _fail(db_dsn, [i for i in first if i.id == p1], delay=0, permanent=True)
    rows = conn.execute(
        "SELECT id, status, parked_by, last_error FROM outbox_event WHERE aggregate_id = 'p' "
        "ORDER BY id"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (p1, "dead", None),
        (p2, "dead", p1),
        (p3, "dead", p1),
        (p4, "dead", p1),
    ]
    assert rows[1][3] == f"parked: behind dead event {p1} of order p"
    assert blocked_aggregates(conn) == {"waiting": 0, "parked": 1}
    conn.commit()
    assert _claim(db_dsn) == [], "nothing of p is claimable while it is parked"
    assert OutboxRepository(db_dsn).retry_dead_event(p1) is True
    statuses = conn.execute(
        "SELECT status, count(*) FROM outbox_event WHERE aggregate_id = 'p' GROUP BY 1"
    ).fetchall()
    conn.commit()
    assert statuses == [("pending", 4)]
    fp = conn.execute(
        "SELECT count(*) FROM outbox_dead_fingerprint WHERE event_id = ANY(%s)", ([p2, p3, p4],)
    ).fetchone()
    assert fp == (0,), "unparked events left the dead-letter mirror"
    order = []
    for _ in range(4):
        (item,) = _claim(db_dsn)
        order.append(item.id)
        _complete(db_dsn, [item])
    assert order == [p1, p2, p3, p4], "back in publish order, one at a time"


def test_redrive_by_filter_and_the_sql_function_unpark_too(db_dsn: str, conn: Conn) -> None:
    p1, p2 = publish_many(conn, [_event("p", "o.park"), _event("p", "o.park")])
    conn.commit()
    _fail(db_dsn, [i for i in _claim(db_dsn) if i.id == p1], delay=0, permanent=True)
    # Only the blocker matches this filter (the parked one's error names it, not "boom").
    row = conn.execute(
        "SELECT processed FROM redrive_dead_events(error_contains => 'Boom: boom')"
    ).fetchone()
    conn.commit()
    assert row == (1,)
    got = conn.execute(
        "SELECT id, status FROM outbox_event WHERE id = ANY(%s) ORDER BY id", ([p1, p2],)
    ).fetchall()
    assert got == [(p1, "pending"), (p2, "pending")]


def test_an_ordered_claim_serialises_with_others(db_dsn: str, conn: Conn) -> None:
    # Two claims at once on separate connections never take two events of one aggregate.
    publish_many(conn, [_event(str(i % 20)) for i in range(400)])
    conn.commit()

    async def both() -> list[list[store.Claimed]]:
        conns = [await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) for _ in range(4)]
        try:
            return list(
                await asyncio.gather(
                    *(
                        store.claim(
                            c, worker="t", limit=15, lease_seconds=60, ordered=_plan().params()
                        )
                        for c in conns
                    )
                )
            )
        finally:
            for c in conns:
                await c.close()

    claims = asyncio.run(both())
    aggregates = [i.aggregate_id for claim in claims for i in claim]
    assert len(aggregates) == 20 and len(set(aggregates)) == 20


# -- checksums ------------------------------------------------------------------------------------

AWKWARD: list[Any] = [
    {},
    [],
    {"b": 1, "a": 2, "aa": 3, "é": 4, "z": 5, "ab": [1, 2, {"k": None}]},
    {"text": 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f'},
    {"unicode": "zażółć gęślą jaźń 😀 \u2028"},
    {"floats": [0.1, 1.0, -0.0, 1e16, 1.5e-7, 1e-5, 123.456, 2.5e300, -3.25e-10]},
    {"ints": [0, -1, 2**63, 10**40]},
    {"bools": [True, False, None]},
    {1: "int key", "1": "str key wins", 2: "two", False: "f", None: "n"},
    ["tuple", ("a", 1)],
    "just a string",
    42,
    3.5,
    None,
]


@pytest.mark.parametrize("payload", AWKWARD, ids=range(len(AWKWARD)))
def test_python_checksum_is_postgresqls(conn: Conn, payload: Any) -> None:
    single = publish(conn, **_event("c", "plain", payload=payload))
    keyed = publish_many(conn, [_event("c", "plain", payload=payload, idempotency_key="k")])
    copied = publish_many(conn, [_event("c", "plain", payload=payload)])
    rows = conn.execute(
        "SELECT payload::text, payload_sha256, outbox_payload_sha256(payload) FROM outbox_event"
        " WHERE id = ANY(%s)",
        ([single, *keyed, *copied],),
    ).fetchall()
    assert len(rows) == 3
    for text, stored, computed in rows:
        assert checksum.jsonb_text(payload) == text
        assert stored == computed


def _dead(conn: Conn, n: int) -> list[int]:
    ids = publish_many(conn, [_event(str(i), "plain", payload={"n": i}) for i in range(n)])
    conn.execute(
        "UPDATE outbox_event SET status = 'dead', dead_at = now(), last_error = 'Boom: x'"
        " WHERE id = ANY(%s)",
        (ids,),
    )
    conn.commit()
    return ids


def test_changed_payloads_are_reported_by_export_and_redrive(
    db_dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    ids = _dead(conn, 4)
    # An edit behind dispatchbox's back, and an event from before migration 0009 (no checksum).
    conn.execute("UPDATE outbox_event SET payload = '{\"n\": 99}' WHERE id = %s", (ids[1],))
    conn.execute("UPDATE outbox_event SET payload_sha256 = NULL WHERE id = %s", (ids[2],))
    conn.commit()
    repo = OutboxRepository(db_dsn)
    out = io.StringIO()
    assert repo.export_dead_events(out, "jsonl", actor="t") == 4
    docs = {d["id"]: d for d in map(json.loads, out.getvalue().splitlines())}
    assert docs[ids[0]]["payload_intact"] is True
    assert docs[ids[0]]["payload_sha256"] == checksum.payload_sha256({"n": 0})
    assert docs[ids[1]]["payload_intact"] is False
    assert docs[ids[2]]["payload_intact"] is None and docs[ids[2]]["payload_sha256"] is None
    csv_out = io.StringIO()
    repo.export_dead_events(csv_out, "csv", actor="t")
    assert csv_out.getvalue().count(",false\n") == 1
    assert "payload_checksum_mismatch action=export count=1" in caplog.text
    assert repo.retry_dead_events_batch(ids[:2], actor="t") == 2
    assert "payload_checksum_mismatch action=retry_batch count=1" in caplog.text
    details = [
        r[0]
        for r in conn.execute("SELECT details FROM outbox_dead_letter_audit ORDER BY id").fetchall()
    ]
    assert details[0]["payload_mismatch"] == [ids[1]]
    assert details[2]["payload_mismatch"] == [ids[1]]
    assert details[1]["payload_mismatch"] == [ids[1]]


# -- backpressure ---------------------------------------------------------------------------------


@pytest.fixture
def limits() -> Iterator[None]:
    backpressure.clear()
    backpressure.set_cache_seconds(0)
    try:
        yield
    finally:
        backpressure.clear()
        backpressure.set_cache_seconds(1.0)


def _refresh(dsn: str) -> int:
    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await backpressure.refresh(conn)

    backpressure.REFRESH_SECONDS, saved = 0.0, backpressure.REFRESH_SECONDS
    try:
        return asyncio.run(go())
    finally:
        backpressure.REFRESH_SECONDS = saved


def test_publish_fails_fast_once_the_backlog_passes_its_limit(
    db_dsn: str, conn: Conn, limits: None
) -> None:
    set_backlog_limit("bp.limited", 5)
    publish_many(conn, [_event(str(i), "bp.limited") for i in range(3)])
    publish_many(conn, [_event(str(i), "bp.limited") for i in range(3)])  # registered, not counted
    publish_many(conn, [_event(str(i), "bp.free") for i in range(50)])
    conn.commit()
    assert _refresh(db_dsn) == 1, "only the limited type is counted"
    with pytest.raises(BacklogFullError, match=r"'bp\.limited' is full: about 6 pending, limit 5"):
        publish(conn, **_event("x", "bp.limited"))
    conn.rollback()
    with pytest.raises(BacklogFullError):
        publish_many(conn, [_event("x", "bp.free"), _event("y", "bp.limited")])
    conn.rollback()
    publish(conn, **_event("x", "bp.free"))  # other types are not limited
    conn.execute("UPDATE outbox_event SET status = 'done', done_at = now()")
    conn.commit()
    _refresh(db_dsn)
    publish(conn, **_event("x", "bp.limited"))  # drained: accepted again
    conn.commit()


def test_backlog_refresh_runs_once_per_interval_and_not_without_limits(
    db_dsn: str, conn: Conn
) -> None:
    async def twice() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
            return (await backpressure.refresh(c), await backpressure.refresh(c))

    assert asyncio.run(twice()) == (0, 0), "nothing registered: no count at all"
    queries.execute(conn, "backlog_register", {"event_types": ["a", "b"]})
    conn.commit()
    assert asyncio.run(twice()) == (2, 0), "the second call within the interval does nothing"


# -- expiry (the worker's check) ------------------------------------------------------------------


def test_expires_at_is_stored_and_validated(conn: Conn) -> None:
    at = datetime.now(UTC) + timedelta(minutes=5)
    one = publish(conn, **_event("e", "plain", expires_at=at))
    (many,) = publish_many(conn, [_event("e", "plain", expires_at=at)])
    keyed = publish_many(
        conn, [_event("e", "plain", expires_at=at, idempotency_key=str(uuid.uuid4()))]
    )
    got = conn.execute(
        "SELECT expires_at FROM outbox_event WHERE id = ANY(%s)", ([one, many, *keyed],)
    ).fetchall()
    assert [r[0] for r in got] == [at, at, at]
    from dispatchbox.errors import InvalidEvent

    with pytest.raises(InvalidEvent, match="expires_at must be timezone-aware"):
        publish(conn, **_event("e", "plain", expires_at=datetime.now()))
