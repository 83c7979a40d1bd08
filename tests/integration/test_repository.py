"""OutboxRepository on a real PostgreSQL: reads, stats, redrive, export, purge and the audit trail.

Dead rows are written directly with SQL (make_dead), as the worker would leave them: status
'dead', attempts = max_attempts, last_error '<Type>: <message>', dead_at set, and one
outbox_event_error row per failed attempt.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from dispatchbox import OutboxRepository
from dispatchbox.errors import EventNotDead, InvalidEventIds, InvalidFilter
from dispatchbox.export import CSV_COLUMNS
from dispatchbox.filters import DeadEventFilter
from dispatchbox.fingerprint import fingerprint, signature

Conn = psycopg.Connection[Any]


def make_dead(
    conn: Conn,
    n: int = 1,
    *,
    event_type: str = "order.created",
    aggregate_type: str = "order",
    error: str = "KeyError: 'order_{i}'",
    dead_at: datetime | None = None,
    attempts: int = 3,
    payload: Any = None,
    headers: dict[str, Any] | None = None,
) -> list[int]:
    """n dead events with their error history; {i} in error is replaced by the row's number."""
    ids = []
    for i in range(n):
        message = error.format(i=i)
        etype, _, text = message.partition(": ")
        row = conn.execute(
            """
            INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, headers,
                status, attempts, max_attempts, last_error, last_error_at, dead_at)
            VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, 'dead', %s, %s, %s,
                    COALESCE(%s, now()), COALESCE(%s, now()))
            RETURNING id
            """,
            (
                aggregate_type,
                str(i),
                event_type,
                json.dumps(payload if payload is not None else {"n": i}),
                json.dumps(headers or {}),
                attempts,
                attempts,
                message,
                dead_at,
                dead_at,
            ),
        ).fetchone()
        assert row is not None
        for attempt in range(1, attempts + 1):
            conn.execute(
                "INSERT INTO outbox_event_error (event_id, attempt, worker, error_type, message, "
                "traceback) VALUES (%s, %s, 'host:1', %s, %s, 'Traceback ...')",
                (row[0], attempt, etype, text or message),
            )
        ids.append(row[0])
    conn.commit()
    return ids


def make_live(conn: Conn, status: str = "pending") -> int:
    """One event that is not dead (pending, running with a lease, or done)."""
    row = conn.execute(
        """
        INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, attempts,
            locked_by, locked_until, lease_token, done_at)
        VALUES ('order', 'live', 'order.created', %(s)s,
            CASE WHEN %(s)s = 'pending' THEN 0 ELSE 1 END,
            CASE WHEN %(s)s = 'running' THEN 'w1' END,
            CASE WHEN %(s)s = 'running' THEN now() + interval '1 minute' END,
            CASE WHEN %(s)s = 'running' THEN gen_random_uuid() END,
            CASE WHEN %(s)s = 'done' THEN now() END)
        RETURNING id
        """,
        {"s": status},
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def row_of(conn: Conn, event_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM outbox_event WHERE id = %s", (event_id,))
    values = cur.fetchone()
    conn.commit()
    assert values is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], values, strict=True))


def audit_rows(conn: Conn) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM outbox_dead_letter_audit ORDER BY id")
    rows = cur.fetchall()
    conn.commit()
    assert cur.description is not None
    names = [c.name for c in cur.description]
    return [dict(zip(names, r, strict=True)) for r in rows]


def error_count(conn: Conn, event_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM outbox_event_error WHERE event_id = %s", (event_id,)
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


@pytest.fixture
def repo(db_dsn: str) -> OutboxRepository:
    return OutboxRepository(db_dsn)


# -- reads ----------------------------------------------------------------------------------------


def test_fetch_lists_only_dead_events_in_id_order_with_every_filter(
    conn: Conn, repo: OutboxRepository
) -> None:
    now = datetime.now(UTC)
    old = make_dead(conn, 2, event_type="order.paid", dead_at=now - timedelta(days=3))
    mid = make_dead(
        conn,
        2,
        aggregate_type="invoice",
        error="TimeoutError: 100% of _quota used",
        dead_at=now - timedelta(days=1),
    )
    new = make_dead(conn, 2, error="ValueError: order {i} has no customer")
    make_live(conn, "pending")
    make_live(conn, "running")
    make_live(conn, "done")

    assert [e.id for e in repo.fetch_dead_events()] == old + mid + new
    assert all(e.status == "dead" for e in repo.fetch_dead_events())
    assert [e.id for e in repo.fetch_dead_events(event_type="order.paid")] == old
    assert [e.id for e in repo.fetch_dead_events(aggregate_type="invoice")] == mid
    assert [e.id for e in repo.fetch_dead_events(since=now - timedelta(hours=36))] == mid + new
    assert [e.id for e in repo.fetch_dead_events(until=now - timedelta(hours=36))] == old
    # % and _ in the text are literal, and the match ignores case
    assert [e.id for e in repo.fetch_dead_events(error_contains="100% OF _QUOTA")] == mid
    assert repo.fetch_dead_events(error_contains="100%_of") == []
    fp = fingerprint("ValueError: order 1 has no customer")
    assert [e.id for e in repo.fetch_dead_events(error_fingerprint=fp)] == new
    assert {e.error_fingerprint for e in repo.fetch_dead_events(error_fingerprint=fp)} == {fp}
    flt = DeadEventFilter(aggregate_type="order", since=now - timedelta(days=2))
    assert [e.id for e in repo.fetch_dead_events(filter=flt)] == new
    with pytest.raises(TypeError):
        repo.fetch_dead_events(filter=flt, event_type="x")


def test_offset_and_keyset_pages(conn: Conn, repo: OutboxRepository) -> None:
    ids = make_dead(conn, 7)
    assert [e.id for e in repo.fetch_dead_events(limit=3)] == ids[:3]
    assert [e.id for e in repo.fetch_dead_events(limit=3, offset=3)] == ids[3:6]
    assert [e.id for e in repo.fetch_dead_events(limit=3, after_id=ids[2])] == ids[3:6]
    assert [e.id for e in repo.fetch_dead_events(limit=3, after_id=ids[5])] == ids[6:]
    assert repo.fetch_dead_events(after_id=ids[-1]) == []
    for bad in ({"limit": 0}, {"limit": 10_001}, {"offset": -1}, {"after_id": -5}):
        with pytest.raises(InvalidFilter):
            repo.fetch_dead_events(**bad)  # type: ignore[arg-type]


def test_count_matches_the_filters(conn: Conn, repo: OutboxRepository) -> None:
    make_dead(conn, 3, event_type="a")
    make_dead(conn, 2, event_type="b", aggregate_type="invoice")
    make_live(conn)
    assert repo.count_dead_events() == 5
    assert repo.count_dead_events(event_type="a") == 3
    assert repo.count_dead_events(aggregate_type="invoice") == 2
    assert repo.count_dead_events(event_type="a", aggregate_type="invoice") == 0
    assert repo.count_dead_events(filter=DeadEventFilter(error_contains="order_1")) == 2


def test_stats_totals_groups_and_error_analysis(conn: Conn, repo: OutboxRepository) -> None:
    t0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
    # 40 deaths that differ only by the order id in the message: one error group
    keyerrors = [
        make_dead(
            conn,
            1,
            error=f"KeyError: order {1000 + i} not found",
            dead_at=t0 + timedelta(minutes=i),
        )[0]
        for i in range(40)
    ]
    timeouts = make_dead(
        conn,
        5,
        event_type="invoice.issued",
        aggregate_type="invoice",
        error="TimeoutError: request to 10.0.0.{i} timed out after 30s",
        dead_at=t0 - timedelta(days=1),
    )
    stats = repo.dead_event_stats()
    assert stats.total == 45
    assert stats.oldest_dead_at == t0 - timedelta(days=1)
    assert stats.newest_dead_at == t0 + timedelta(minutes=39)
    assert stats.by_event_type is not None and stats.by_aggregate_type is not None
    assert [(g.key, g.count) for g in stats.by_event_type] == [
        ("order.created", 40),
        ("invoice.issued", 5),
    ]
    assert stats.by_event_type[0].first_seen == t0
    assert stats.by_event_type[0].last_seen == t0 + timedelta(minutes=39)
    assert [(g.key, g.count) for g in stats.by_aggregate_type] == [("order", 40), ("invoice", 5)]
    assert stats.by_error is not None
    top, second = stats.by_error
    assert (top.count, top.example_id, top.signature) == (
        40,
        keyerrors[0],
        "KeyError: order <n> not found",
    )
    assert top.fingerprint == fingerprint("KeyError: order 1 not found")
    assert (top.first_seen, top.last_seen) == (t0, t0 + timedelta(minutes=39))
    assert second.count == 5 and second.example_id == timeouts[0]
    assert second.signature == "TimeoutError: request to <n>.<n> timed out after <n>s"

    only_errors = repo.dead_event_stats(by=["error"])
    assert only_errors.total == 45 and only_errors.by_event_type is None
    assert only_errors.newest_dead_at == t0 + timedelta(minutes=39)
    none = repo.dead_event_stats(by=[])
    assert (none.total, none.oldest_dead_at) == (45, t0 - timedelta(days=1))

    filtered = repo.dead_event_stats(event_type="invoice.issued")
    assert filtered.total == 5
    assert filtered.by_error is not None and [g.count for g in filtered.by_error] == [5]
    by_text = repo.dead_event_stats(error_contains="not found", by=["error", "event_type"])
    assert by_text.total == 40
    assert by_text.by_error is not None and [g.count for g in by_text.by_error] == [40]
    by_fp = repo.dead_event_stats(error_fingerprint=top.fingerprint, by=["aggregate_type"])
    assert by_fp.total == 40
    with pytest.raises(InvalidFilter, match="unknown grouping"):
        repo.dead_event_stats(by=["status"])


def test_empty_stats(repo: OutboxRepository) -> None:
    stats = repo.dead_event_stats()
    assert (stats.total, stats.oldest_dead_at, stats.by_error) == (0, None, [])


def test_sql_normalisation_agrees_with_the_python_twin(conn: Conn) -> None:
    corpus = [
        "KeyError: 'customer_42'",
        'LookupError: no row for "abc" in "orders"',
        "ValueError: order 12345 has invalid amount 12.50",
        "TimeoutError: request 3F2A9C1E-0B7D-4E8A-9F00-1234567890AB timed out",
        "MemoryError: bad address 0x7ffd3a2b and 0XFF",
        "TraceError: span 4bf92f3577b34da6a3ce929d0e0e4736 lost",
        "Http2Error: stream 7 reset",
        "psycopg.errors.UniqueViolation: duplicate key (id)=(9) exists\nDETAIL: more",
        "RuntimeError: boom   at\t step 3\r\n  File x",
        "  no type prefix 42 ",
        "",
        "can't reach 'db1' on port 5432",
        "Zażółć: gęślą jaźń 12 'x' \"y\"",
        "ValueError: " + "9" * 600,
        "E: 1.2.3 v10 abc123def4567890abcdef 1e10",
        "ConnectionError: [Errno 111] Connection refused ('10.0.0.1', 5432)",
    ]
    for error in corpus:
        row = conn.execute(
            "SELECT outbox_error_signature(%s), outbox_error_fingerprint(%s)", (error, error)
        ).fetchone()
        assert row == (signature(error), fingerprint(error)), error
    assert conn.execute("SELECT outbox_error_fingerprint(NULL)").fetchone() == (None,)


def test_fingerprint_table_mirrors_dead_rows(conn: Conn, repo: OutboxRepository) -> None:
    def mirrored() -> dict[int, str]:
        rows = conn.execute("SELECT event_id, fingerprint FROM outbox_dead_fingerprint").fetchall()
        conn.commit()
        return dict(rows)

    ids = make_dead(conn, 3, error="KeyError: {i}")
    live = make_live(conn)
    assert set(mirrored()) == set(ids)
    # a live event dying joins it; a changed error moves it to another group
    conn.execute(
        "UPDATE outbox_event SET status = 'dead', dead_at = now(), last_error = 'X: 1' "
        "WHERE id = %s",
        (live,),
    )
    conn.execute("UPDATE outbox_event SET last_error = 'OtherError: 7' WHERE id = %s", (ids[0],))
    conn.commit()
    assert mirrored()[live] == fingerprint("X: 1")
    assert mirrored()[ids[0]] == fingerprint("OtherError: 7")
    # redrive leaves it; delete (archival) leaves it; truncate empties it
    assert repo.retry_dead_event(ids[1], actor="t")
    conn.execute("DELETE FROM outbox_event WHERE id = %s", (ids[2],))
    conn.commit()
    assert set(mirrored()) == {ids[0], live}
    conn.execute("TRUNCATE outbox_event, outbox_event_error")
    conn.commit()
    assert mirrored() == {}


def test_get_event_with_error_history(conn: Conn, repo: OutboxRepository) -> None:
    (event_id,) = make_dead(conn, error="KeyError: 'k'", attempts=4, payload={"a": [1, 2]})
    event = repo.get_event(event_id)
    assert event is not None
    assert (event.status, event.attempts, event.payload) == ("dead", 4, {"a": [1, 2]})
    assert event.error_fingerprint == fingerprint("KeyError: 'k'")
    assert [e.attempt for e in event.errors] == [1, 2, 3, 4]
    assert event.errors[0].error_type == "KeyError" and event.errors[0].traceback
    assert json.loads(json.dumps(event.to_json()))["errors"][0]["attempt"] == 1
    live = repo.get_event(make_live(conn))
    assert live is not None and live.status == "pending" and live.errors == []
    assert repo.get_event(10**9) is None
    assert repo.get_event(2**70) is None


# -- redrive --------------------------------------------------------------------------------------


def test_retry_one_resets_the_event_and_keeps_its_history(
    conn: Conn, repo: OutboxRepository
) -> None:
    (event_id,) = make_dead(conn, error="KeyError: 'k'", attempts=3)
    before = row_of(conn, event_id)
    assert repo.retry_dead_event(event_id, actor="alice") is True
    after = row_of(conn, event_id)
    assert after["status"] == "pending"
    assert after["attempts"] == 0
    assert after["dead_at"] is None
    assert after["locked_by"] is None and after["lease_token"] is None
    assert after["redrive_count"] == 1
    assert after["last_redriven_by"] == "alice"
    assert after["last_redriven_at"] is not None
    assert after["next_attempt_at"] <= after["last_redriven_at"] + timedelta(seconds=1)
    assert after["last_error"] == before["last_error"] == "KeyError: 'k'"
    assert after["last_error_at"] == before["last_error_at"]
    assert error_count(conn, event_id) == 3
    (audit,) = audit_rows(conn)
    assert audit["action"] == "retry" and audit["event_ids"] == [event_id]
    assert (audit["actor"], audit["db_role"], audit["affected"]) == ("alice", "postgres", 1)
    assert audit["outcome"] == "completed" and audit["finished_at"] is not None


def test_retry_one_of_a_missing_or_live_event_changes_nothing(
    conn: Conn, repo: OutboxRepository
) -> None:
    assert repo.retry_dead_event(999_999, actor="t") is False
    assert repo.retry_dead_event(-1, actor="t") is False
    for status in ("pending", "running", "done"):
        event_id = make_live(conn, status)
        before = row_of(conn, event_id)
        with pytest.raises(EventNotDead, match=f"is {status}, not dead") as info:
            repo.retry_dead_event(event_id, actor="t")
        assert isinstance(info.value, ValueError)
        assert row_of(conn, event_id) == before
    assert audit_rows(conn) == []


def test_retry_batch_with_dead_live_and_missing_ids(conn: Conn, repo: OutboxRepository) -> None:
    dead = make_dead(conn, 3)
    pending = make_live(conn, "pending")
    running = make_live(conn, "running")
    before = {i: row_of(conn, i) for i in (pending, running)}
    with pytest.raises(InvalidEventIds) as info:
        repo.retry_dead_events_batch([*dead, pending, 424242, running], actor="bob")
    assert info.value.missing == [424242]
    assert info.value.not_dead == [pending, running]
    assert "424242" in str(info.value) and str(pending) in str(info.value)
    assert "nothing was retried" in str(info.value)
    assert all(row_of(conn, i)["status"] == "dead" for i in dead)
    assert {i: row_of(conn, i) for i in (pending, running)} == before
    assert audit_rows(conn) == []

    n = repo.retry_dead_events_batch(
        [*dead, pending, 424242, dead[0]], actor="bob", skip_invalid=True
    )
    assert n == 3
    assert all(row_of(conn, i)["status"] == "pending" for i in dead)
    assert row_of(conn, pending) == before[pending]
    (audit,) = audit_rows(conn)
    assert (audit["action"], audit["event_ids"], audit["affected"]) == ("retry_batch", dead, 3)
    assert audit["details"] == {"requested": 5, "skipped": [424242, pending]}
    assert repo.retry_dead_events_batch([], actor="bob") == 0
    with pytest.raises(InvalidFilter):
        repo.retry_dead_events_batch(["1"], actor="bob")  # type: ignore[list-item]


def test_retry_by_filter_in_batches_is_resumable_and_audited(conn: Conn, db_dsn: str) -> None:
    repo = OutboxRepository(db_dsn, batch_size=4)
    targets = make_dead(conn, 10, event_type="order.paid", error="HTTPError: 503 for {i}")
    others = make_dead(conn, 3, event_type="order.created")
    seen: list[int] = []
    n = repo.retry_dead_events(
        DeadEventFilter(event_type="order.paid"), limit=6, actor="carol", progress=seen.append
    )
    assert n == 6 and seen == [4, 6]
    assert [row_of(conn, i)["status"] for i in targets] == ["pending"] * 6 + ["dead"] * 4
    # run again without a limit: only what is still dead, nothing twice
    assert repo.retry_dead_events(DeadEventFilter(event_type="order.paid"), actor="carol") == 4
    assert repo.retry_dead_events(DeadEventFilter(event_type="order.paid"), actor="carol") == 0
    assert all(row_of(conn, i)["redrive_count"] == 1 for i in targets)
    assert all(row_of(conn, i)["status"] == "dead" for i in others)
    audits = audit_rows(conn)
    assert [(a["action"], a["affected"], a["outcome"]) for a in audits] == [
        ("retry_filter", 6, "completed"),
        ("retry_filter", 4, "completed"),
        ("retry_filter", 0, "completed"),
    ]
    assert audits[0]["filter"] == {"event_type": "order.paid"}
    assert audits[0]["details"]["limit"] == 6 and audits[0]["event_ids"] is None


def test_retry_by_error_fingerprint_and_time_window(conn: Conn, repo: OutboxRepository) -> None:
    now = datetime.now(UTC)
    a = make_dead(conn, 3, error="KeyError: order {i} missing", dead_at=now - timedelta(hours=2))
    b = make_dead(conn, 2, error="ValueError: bad {i}", dead_at=now - timedelta(hours=2))
    c = make_dead(conn, 2, error="KeyError: order {i} missing", dead_at=now - timedelta(days=3))
    flt = DeadEventFilter(
        error_fingerprint=fingerprint("KeyError: order 7 missing"),
        since=now - timedelta(days=1),
        until=now,
    )
    assert repo.retry_dead_events(flt, actor="t") == 3
    assert [row_of(conn, i)["status"] for i in a + b + c] == ["pending"] * 3 + ["dead"] * 4
    assert repo.retry_dead_events(DeadEventFilter(error_contains="BAD"), actor="t") == 2


def test_interrupted_redrive_keeps_an_honest_record(conn: Conn, db_dsn: str) -> None:
    repo = OutboxRepository(db_dsn, batch_size=3)
    ids = make_dead(conn, 8)

    def stop_after_first_batch(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        repo.retry_dead_events(None, actor="dave", progress=stop_after_first_batch)
    assert [row_of(conn, i)["status"] for i in ids] == ["pending"] * 3 + ["dead"] * 5
    (audit,) = audit_rows(conn)
    assert (audit["affected"], audit["outcome"]) == (3, "interrupted")
    assert audit["finished_at"] is not None
    assert repo.retry_dead_events(None, actor="dave") == 5
    assert audit_rows(conn)[-1]["affected"] == 5


@pytest.mark.slow
def test_rate_paces_the_redrive(conn: Conn, repo: OutboxRepository) -> None:
    import time

    make_dead(conn, 12)
    seen: list[int] = []
    # the whole set fits one batch of at most 20 a second
    assert repo.retry_dead_events(None, actor="t", rate=20, progress=seen.append) == 12
    assert seen == [12]
    make_dead(conn, 12)
    seen.clear()
    started = time.monotonic()
    assert repo.retry_dead_events(None, actor="t", rate=4, progress=seen.append) == 12
    elapsed = time.monotonic() - started
    # batches of 4, paced to 4 a second: the third batch cannot start before 2 s
    assert seen == [4, 8, 12]
    assert elapsed >= 2.0


def test_redrive_never_touches_rows_that_stop_being_dead(conn: Conn, db_dsn: str) -> None:
    # Another session holds a dead row locked (as archival would): the batch skips it instead of
    # waiting, and a second run picks it up once it is free.
    repo = OutboxRepository(db_dsn, batch_size=10)
    ids = make_dead(conn, 4)
    with psycopg.connect(db_dsn) as other:
        other.execute("SELECT 1 FROM outbox_event WHERE id = %s FOR UPDATE", (ids[1],))
        done = threading.Event()
        result: list[int] = []

        def run() -> None:
            result.append(repo.retry_dead_events(None, actor="t"))
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert done.wait(30), "redrive waited on a locked row"
        thread.join()
        assert result == [3]
        other.rollback()
    assert repo.retry_dead_events(None, actor="t") == 1


def test_invalid_redrive_arguments(repo: OutboxRepository) -> None:
    with pytest.raises(InvalidFilter):
        repo.retry_dead_events(None, limit=0, actor="t")
    with pytest.raises(InvalidFilter):
        repo.retry_dead_events(None, rate=0, actor="t")
    with pytest.raises(TypeError):
        repo.retry_dead_events({"event_type": "x"}, actor="t")  # type: ignore[arg-type]


# -- export ---------------------------------------------------------------------------------------


def _db_rows(conn: Conn) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT e.*, f.fingerprint AS error_fingerprint FROM outbox_event e "
        "LEFT JOIN outbox_dead_fingerprint f ON f.event_id = e.id "
        "WHERE e.status = 'dead' ORDER BY e.id"
    )
    assert cur.description is not None
    names = [c.name for c in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.commit()
    return rows


def test_jsonl_and_json_exports_round_trip(conn: Conn, repo: OutboxRepository) -> None:
    make_dead(
        conn,
        3,
        payload={"text": 'quote " and \\ and\nnewline ünïcode', "n": [1, 2.5, None]},
        headers={"trace": "abc"},
    )
    make_dead(conn, 1, payload=["a", 1], error="ValueError: =cmd")
    make_live(conn)
    rows = _db_rows(conn)
    out = io.StringIO()
    assert repo.export_dead_events(out, "jsonl", actor="erin") == 4
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line) for line in lines]
    for got, want in zip(parsed, rows, strict=True):
        for key in (
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "status",
            "attempts",
            "max_attempts",
            "priority",
            "idempotency_key",
            "last_error",
            "redrive_count",
            "last_redriven_by",
            "headers",
            "payload",
            "error_fingerprint",
        ):
            assert got[key] == want[key], key
        for key in ("created_at", "dead_at", "last_error_at"):
            assert datetime.fromisoformat(got[key]) == want[key], key
    array = io.StringIO()
    assert repo.export_dead_events(array, "json", actor="erin") == 4
    assert json.loads(array.getvalue()) == parsed
    (a1, a2) = audit_rows(conn)
    assert (a1["action"], a1["affected"], a1["details"]) == (
        "export",
        4,
        {"format": "jsonl", "destination": None},
    )
    assert a2["details"]["format"] == "json"


def test_csv_export_parses_and_neutralises_formulas(conn: Conn, repo: OutboxRepository) -> None:
    make_dead(conn, 1, payload=-5, error='=HYPERLINK("http://evil")')
    make_dead(conn, 1, aggregate_type="@admin", error="ValueError: plain, with comma")
    out = io.StringIO()
    assert repo.export_dead_events(out, "csv", actor="t") == 2
    records = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(records[0].keys()) == list(CSV_COLUMNS)
    first, second = records
    assert first["last_error"] == '\'=HYPERLINK("http://evil")'
    assert first["payload"] == "'-5"
    assert second["aggregate_type"] == "'@admin"
    assert second["last_error"] == "ValueError: plain, with comma"
    assert json.loads(second["payload"]) == {"n": 0}
    assert datetime.fromisoformat(second["dead_at"]).tzinfo is not None


def test_export_applies_filters_and_failure_records_nothing(
    conn: Conn, repo: OutboxRepository
) -> None:
    make_dead(conn, 2, event_type="a")
    make_dead(conn, 3, event_type="b")
    out = io.StringIO()
    assert repo.export_dead_events(out, "jsonl", DeadEventFilter(event_type="b"), actor="t") == 3
    assert {json.loads(line)["event_type"] for line in out.getvalue().splitlines()} == {"b"}

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repo.export_dead_events(Broken(), "jsonl", actor="t")
    assert [a["action"] for a in audit_rows(conn)] == ["export"]


def test_empty_export(repo: OutboxRepository) -> None:
    out = io.StringIO()
    assert repo.export_dead_events(out, "json", actor="t") == 0
    assert json.loads(out.getvalue()) == []


# -- purge, history, pools ------------------------------------------------------------------------


def test_purge_moves_old_dead_events_and_their_history_to_the_archive(
    conn: Conn, repo: OutboxRepository
) -> None:
    now = datetime.now(UTC)
    old = make_dead(conn, 3, dead_at=now - timedelta(days=40), attempts=2)
    young = make_dead(conn, 2, dead_at=now - timedelta(days=5))
    assert repo.count_archivable(30) == 3
    assert repo.cleanup_old_dead_events(30, actor="frank") == 3
    remaining = [e.id for e in repo.fetch_dead_events()]
    assert remaining == young
    archived = conn.execute("SELECT id, status FROM outbox_event_archive ORDER BY id").fetchall()
    assert archived == [(i, "dead") for i in old]
    errors = conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone()
    assert errors == (6,)
    fp = conn.execute("SELECT count(*) FROM outbox_dead_fingerprint").fetchone()
    assert fp == (2,)
    conn.commit()
    (audit,) = audit_rows(conn)
    assert (audit["action"], audit["affected"], audit["outcome"]) == ("purge", 3, "completed")
    assert audit["details"]["older_than_days"] == 30
    assert repo.cleanup_old_dead_events(30, actor="frank") == 0
    with pytest.raises(InvalidFilter):
        repo.cleanup_old_dead_events(-1, actor="frank")


def test_history_newest_first(conn: Conn, repo: OutboxRepository) -> None:
    ids = make_dead(conn, 3)
    repo.retry_dead_event(ids[0], actor="a")
    repo.retry_dead_events_batch(ids[1:], actor="b")
    repo.export_dead_events(io.StringIO(), "csv", actor="c")
    entries = repo.history(limit=2)
    assert [(e.action, e.actor) for e in entries] == [("export", "c"), ("retry_batch", "b")]
    assert entries[1].event_ids == ids[1:]
    assert json.loads(json.dumps(entries[0].to_json()))["action"] == "export"


def test_repository_over_a_pool_restores_the_connections(conn: Conn, db_dsn: str) -> None:
    ids = make_dead(conn, 2)
    with ConnectionPool(db_dsn, min_size=1, max_size=1, open=True) as pool:
        repo = OutboxRepository(pool)
        for _ in range(7):  # past psycopg's prepare threshold
            assert repo.count_dead_events() == 2
        assert repo.retry_dead_event(ids[0], actor="p")
        with pool.connection() as pooled:
            assert pooled.autocommit is False
            assert pooled.prepare_threshold == 5
    with pytest.raises(TypeError):
        OutboxRepository(42)  # type: ignore[arg-type]


def test_archive_delegates_to_the_archiver(conn: Conn, repo: OutboxRepository) -> None:
    now = datetime.now(UTC)
    (old_dead,) = make_dead(conn, 1, dead_at=now - timedelta(days=40))
    (young_dead,) = make_dead(conn, 1, dead_at=now - timedelta(days=3))
    done = make_live(conn, "done")
    conn.execute(
        "UPDATE outbox_event SET done_at = now() - interval '10 days' WHERE id = %s", (done,)
    )
    conn.commit()
    assert repo.archive(retention_days=7, dead_retention_days=30) == 2
    archived = conn.execute("SELECT id FROM outbox_event_archive ORDER BY id").fetchall()
    conn.commit()
    assert [r[0] for r in archived] == sorted([old_dead, done])
    assert [e.id for e in repo.fetch_dead_events()] == [young_dead]
