"""publish and publish_many against a real PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dispatchbox import publish, publish_many
from dispatchbox.errors import InvalidEvent

EVENT = {
    "aggregate_type": "order",
    "aggregate_id": "42",
    "event_type": "order.created",
    "payload": {"total": 10},
}


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT count(*) FROM outbox_event").fetchone()
        assert row is not None
        return int(row[0])


def test_publish_joins_the_callers_transaction(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT)
        assert event_id > 0
        conn.rollback()
    assert count(db_dsn) == 0

    with psycopg.connect(db_dsn) as conn:
        publish(conn, **EVENT)
        publish_many(conn, [EVENT, EVENT])
        conn.rollback()
    assert count(db_dsn) == 0

    with psycopg.connect(db_dsn) as conn:
        event_id = publish(conn, **EVENT)
        conn.commit()
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT status, payload, attempts, priority FROM outbox_event WHERE id = %s",
            [event_id],
        ).fetchone()
    assert row == ("pending", {"total": 10}, 0, 5)


def test_idempotency_key_returns_the_existing_event(conn: psycopg.Connection[Any]) -> None:
    first = publish(conn, **EVENT, idempotency_key="k-1")
    second = publish(conn, **EVENT, idempotency_key="k-1")
    assert first == second
    ids = publish_many(
        conn,
        [
            {**EVENT, "idempotency_key": "k-1"},
            {**EVENT, "idempotency_key": "k-2"},
            EVENT,
            {**EVENT, "idempotency_key": "k-2"},
        ],
    )
    assert ids[0] == first
    assert ids[1] == ids[3] != first
    assert len(set(ids)) == 3
    (n,) = conn.execute("SELECT count(*) FROM outbox_event").fetchone() or (0,)
    assert n == 3


def test_publish_many_returns_ids_in_input_order(conn: psycopg.Connection[Any]) -> None:
    events = [{**EVENT, "aggregate_id": str(i), "payload": {"i": i}} for i in range(12_345)]
    ids = publish_many(conn, events)
    assert len(ids) == 12_345
    rows = dict(conn.execute("SELECT id, (payload->>'i')::int FROM outbox_event").fetchall())
    assert [rows[i] for i in ids] == list(range(12_345))


class CountingCursor(psycopg.Cursor[Any]):
    calls = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.calls += 1
        return super().execute(*args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.calls += 1
        return super().copy(*args, **kwargs)


def test_publish_many_round_trips_do_not_grow_with_events(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.calls = 0
        ids = publish_many(conn, [EVENT] * 10_000, batch_size=5000)
        assert CountingCursor.calls == 2, "plain events: draw the ids, one COPY"
        CountingCursor.calls = 0
        keyed = [{**EVENT, "idempotency_key": f"k{i}"} for i in range(10_000)]
        keyed_ids = publish_many(conn, keyed, batch_size=5000)
        assert CountingCursor.calls == 2, "keyed events: one INSERT per batch"
        CountingCursor.calls = 0
        again = publish_many(conn, keyed, batch_size=5000)
        assert CountingCursor.calls == 4, "plus one key look-up per batch with conflicts"
        assert again == keyed_ids
        conn.commit()
    assert len(ids) == 10_000 and count(db_dsn) == 20_000


def _cycle() -> dict[str, Any]:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    return cycle


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_type": ""}, "event_type must not be empty"),
        ({"payload": {"x": object()}}, "not JSON-serialisable"),
        ({"payload": math.nan}, "not JSON-serialisable"),
        ({"payload": _cycle()}, "not JSON-serialisable: nested too deeply, or a reference cycle"),
        ({"aggregate_id": "   "}, "aggregate_id must not be empty"),
        ({"aggregate_type": 7}, "aggregate_type must be a string"),
        ({"priority": True}, "priority must be an integer"),
        ({"priority": 0}, "priority must be an integer between 1 and 10"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"headers": ["x"]}, "headers must be a mapping"),
        ({"available_at": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_bad_input_raises_before_anything_is_written(
    db_dsn: str, change: dict[str, Any], message: str
) -> None:
    with psycopg.connect(db_dsn) as conn:
        with pytest.raises(InvalidEvent, match=message):
            publish(conn, **{**EVENT, **change})
        with pytest.raises(InvalidEvent, match=message):
            publish_many(conn, [EVENT, {**EVENT, **change}])
        conn.commit()
    assert count(db_dsn) == 0


def test_publish_many_rejects_unknown_keywords(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(InvalidEvent, match="unknown keyword"):
        publish_many(conn, [{**EVENT, "colour": "red"}])
    with pytest.raises(TypeError):
        publish(conn, **EVENT, colour="red")  # type: ignore[call-arg]


def test_available_at_delays_the_event(conn: psycopg.Connection[Any]) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    event_id = publish(conn, **EVENT, available_at=later, priority=1, max_attempts=9)
    row = conn.execute(
        "SELECT next_attempt_at, priority, max_attempts FROM outbox_event WHERE id = %s",
        [event_id],
    ).fetchone()
    assert row == (later, 1, 9)


def test_one_notification_per_publishing_transaction(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN dispatchbox_outbox")
        with psycopg.connect(db_dsn) as conn:
            publish_many(conn, [EVENT] * 500)
            publish(conn, **EVENT)
            conn.commit()
        got = list(listener.notifies(timeout=1.0))
    assert len(got) == 1
    assert got[0].channel == "dispatchbox_outbox"


def test_publish_many_stores_what_publish_stores(conn: psycopg.Connection[Any]) -> None:
    # The COPY path prepares the jsonb fields itself; the stored documents must equal those of
    # the INSERT path, for any JSON the json module accepts.
    payloads: list[Any] = [
        {"pl": "zażółć gęślą jaźń", "emoji": "😀", "quote": 'a"b\\c\n'},
        [1, 2.5, -0.0, None, True, {"nested": {"deep": [[]]}}],
        {"big": 123456789012345678901234567890, "tiny": 1e-300, "int_key": {1: "one"}},
        "just a string",
        42,
    ]
    events = [
        {**EVENT, "payload": p, "headers": {"trace": "t-ą"} if i % 2 else None}
        for i, p in enumerate(payloads)
    ]
    copied = publish_many(conn, events)
    inserted = [publish(conn, **e) for e in events]  # type: ignore[arg-type]
    rows = dict(
        conn.execute(
            "SELECT id, (payload::text, headers::text) FROM outbox_event WHERE id = ANY(%s)",
            [copied + inserted],
        ).fetchall()
    )
    assert [rows[i] for i in copied] == [rows[i] for i in inserted]
    assert rows[copied[2]][0].startswith('{"big": 123456789012345678901234567890')
