"""Canary and paced redrive operations, the dry-run plan, order-preserving batches and the error
group registry, on a real PostgreSQL (dispatchbox.redrive). Real workers: the slow tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository
from dispatchbox.filters import DeadEventFilter
from dispatchbox.redrive import RedriveService
from dispatchbox.redrive.diff import classify_groups
from tests.integration.test_redrive import publish, statuses
from tests.integration.test_redrive import worker as worker  # the fixture: real workers
from tests.worker_helpers import wait_until

Conn = psycopg.Connection[Any]


def dead(
    conn: Conn,
    aggregates: Iterable[tuple[str, int]],
    *,
    error: str = "ConnectionError: downstream refused order {a}",
    event_type: str = "order.paid",
    created: datetime | None = None,
) -> list[int]:
    """Dead events: ``n`` per aggregate id ``a``, created one second apart in id order."""
    base = created or datetime.now(UTC) - timedelta(hours=1)
    ids = []
    k = 0
    for aggregate, n in aggregates:
        for _ in range(n):
            row = conn.execute(
                "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status,"
                " attempts, last_error, last_error_at, dead_at, created_at)"
                " VALUES ('order', %s, %s, 'dead', 1, %s, now(), now(), %s) RETURNING id",
                (aggregate, event_type, error.format(a=aggregate), base + timedelta(seconds=k)),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
            k += 1
    conn.commit()
    return ids


def settle(conn: Conn, ids: list[int], status: str, error: str | None = None) -> None:
    """What a worker would have done with redriven events: done, or dead again (with a history
    row, as worker_fail writes one)."""
    conn.execute(
        "UPDATE outbox_event SET status = %s, done_at = CASE WHEN %s = 'done' THEN now() END,"
        " dead_at = CASE WHEN %s = 'dead' THEN now() END,"
        " last_error = COALESCE(%s, last_error) WHERE id = ANY(%s)",
        (status, status, status, error, ids),
    )
    if error is not None:
        etype, _, message = error.partition(": ")
        conn.execute(
            "INSERT INTO outbox_event_error (event_id, attempt, error_type, message)"
            " SELECT unnest(%s::bigint[]), 1, %s, %s",
            (ids, etype, message),
        )
    conn.commit()


def service(dsn: str) -> RedriveService:
    return OutboxRepository(dsn).redrive()


def states(conn: Conn, ids: list[int]) -> dict[int, tuple[str, int]]:
    rows = conn.execute(
        "SELECT id, status, redrive_count FROM outbox_event WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    conn.commit()
    return {r[0]: (r[1], r[2]) for r in rows}


def audit(conn: Conn) -> list[tuple[str, int, str]]:
    rows = conn.execute(
        "SELECT action, affected, outcome FROM outbox_dead_letter_audit ORDER BY id"
    ).fetchall()
    conn.commit()
    return [tuple(r) for r in rows]


# -- canary, driven by hand (no worker): settle timeout, resume, promotion bounds ---------------


def test_canary_waits_is_resumed_and_promotes_only_the_original_selection(
    conn: Conn, db_dsn: str
) -> None:
    ids = dead(conn, [(str(a), 2) for a in range(20)])  # 20 aggregates of 2 events
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("count", 4), canary_success=100)
    canary = op.canary_ids or []
    assert len(canary) == 4 and op.phase == "canary"
    # Whole aggregates: both events of each sampled aggregate, none split from the rest.
    aggregates = conn.execute(
        "SELECT aggregate_id, count(*) FROM outbox_event WHERE id = ANY(%s) GROUP BY 1", (canary,)
    ).fetchall()
    conn.commit()
    assert sorted(n for _, n in aggregates) == [2, 2]

    lines: list[str] = []
    waited = svc.run(op.id, wait=0.3, report=lines.append)
    assert waited.phase == "canary", "not settled: nothing promoted, the operation waits"
    assert any("did not settle" in line for line in lines)
    assert audit(conn) == [("redrive_canary", 4, "interrupted")]
    assert sum(1 for s, _ in states(conn, ids).values() if s == "dead") == 36

    # Meanwhile a new event dies: after the operation's cutoff, it is not part of it.
    (late,) = dead(conn, [("late", 1)])
    settle(conn, canary, "done")
    finished = svc.run(op.id)
    assert finished.phase == "completed" and finished.redriven == 40, finished
    assert finished.verdict is not None and finished.verdict["passed"] is True
    after = states(conn, [*ids, late])
    assert after[late] == ("dead", 0)
    assert all(after[i] == ("pending", 1) for i in ids if i not in canary)
    assert audit(conn) == [("redrive_canary", 40, "completed")]
    assert svc.run(op.id).phase == "completed", "running a finished operation changes nothing"


def test_canary_stops_on_a_new_error_group_and_promotes_nothing(conn: Conn, db_dsn: str) -> None:
    ids = dead(conn, [(str(a), 1) for a in range(30)])
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("percent", 10), canary_success=0)
    canary = op.canary_ids or []
    assert len(canary) == 3
    settle(conn, canary, "dead", error="ValueError: schema mismatch in order 7")
    result = svc.run(op.id)
    assert result.phase == "stopped"
    assert result.reason is not None and "new error group" in result.reason
    rest = [i for i in ids if i not in canary]
    assert all(s == ("dead", 0) for i, s in states(conn, rest).items()), "nothing promoted"
    assert audit(conn) == [("redrive_canary", 3, "completed")]


def test_canary_stops_below_the_success_threshold(conn: Conn, db_dsn: str) -> None:
    ids = dead(conn, [(str(a), 1) for a in range(10)])
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("count", 4), canary_success=80)
    canary = op.canary_ids or []
    # Three succeed, one dies again with the error it had: 75% < 80%.
    settle(conn, canary[:3], "done")
    settle(conn, canary[3:], "dead", error="ConnectionError: downstream refused order 1")
    result = service(db_dsn).run(op.id)
    assert result.phase == "stopped"
    assert (
        result.reason is not None and "75.0% of the canary succeeded, 80% required" in result.reason
    )
    assert sum(1 for s, _ in states(conn, ids).values() if s == "dead") == 7


def test_a_second_runner_of_one_operation_is_refused(conn: Conn, db_dsn: str) -> None:
    from dispatchbox.errors import OperationInProgress

    dead(conn, [("a", 1), ("b", 1)])
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("count", 1))
    with psycopg.connect(db_dsn, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('dispatchbox.redrive_operation'), %s)", (op.id,)
        )
        with pytest.raises(OperationInProgress):
            svc.run(op.id, wait=0)


# -- paced redrive: max replays, the breaker seam ----------------------------------------------


class FlakyGate:
    """A breaker that is open for the first ``n`` looks (the seam's contract, no database)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[list[str]] = []

    def open_destinations(self, destinations: Iterable[str]) -> set[str]:
        self.asked.append(list(destinations))
        if self.n > 0:
            self.n -= 1
            return set(self.asked[-1])
        return set()


def test_paced_redrive_waits_while_the_breaker_is_open_and_skips_replayed_events(
    conn: Conn, db_dsn: str
) -> None:
    ids = dead(conn, [(str(a), 1) for a in range(10)])
    conn.execute("UPDATE outbox_event SET redrive_count = 3 WHERE id = ANY(%s)", (ids[:2],))
    conn.commit()
    gate = FlakyGate(3)
    slept: list[float] = []
    repo = OutboxRepository(db_dsn)
    svc = RedriveService(repo.connection, gate=gate, sleep=slept.append)
    op = svc.start(DeadEventFilter(), actor="ops", max_replays=3, rate=1000)
    result = svc.run(op.id)
    assert result.phase == "completed" and result.redriven == 8
    assert gate.asked[0] == ["order.paid"], "asked about the selection's destinations"
    assert len(slept) >= 3, "paused while the breaker was open"
    after = states(conn, ids)
    assert all(after[i] == ("dead", 3) for i in ids[:2]), "--max-replays left them dead"
    assert all(after[i] == ("pending", 1) for i in ids[2:])
    assert audit(conn) == [("redrive_paced", 8, "completed")]


# -- order and the plan ---------------------------------------------------------------------


def test_redrive_returns_each_aggregate_in_its_outbox_order(conn: Conn, db_dsn: str) -> None:
    # Ids run against creation time within the aggregate (the later insert's transaction began
    # first): the outbox sequence (id) is the order the ordered claim delivered them in, so the
    # redrive keeps it, even for a claim that looks at the due time first.
    first_id, second_id = dead(conn, [("A", 2)])
    conn.execute(
        "UPDATE outbox_event SET created_at = created_at - interval '1 hour' WHERE id = %s",
        (second_id,),
    )
    conn.commit()
    svc = service(db_dsn)
    svc.run(svc.start(DeadEventFilter(), actor="ops").id)
    claimed = conn.execute(
        "SELECT id FROM outbox_event WHERE status = 'pending'"
        " ORDER BY priority, next_attempt_at, id"
    ).fetchall()
    conn.commit()
    assert [r[0] for r in claimed] == [first_id, second_id]


def test_plan_counts_groups_conflicts_and_the_time_at_a_rate(conn: Conn, db_dsn: str) -> None:
    ids = dead(conn, [("A", 2), ("B", 1), ("C", 1)], error="ConnectionError: refused")
    dead(conn, [("X", 3)], error="KeyError: 'sku {a}'", event_type="order.shipped")
    # A moved on: a newer event of it is done. B's idempotency key is held by a newer archived
    # event (the live unique index leaves no other way).
    conn.execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, done_at)"
        " VALUES ('order', 'A', 'order.paid', 'done', now())"
    )
    conn.execute("UPDATE outbox_event SET idempotency_key = 'k-b' WHERE id = %s", (ids[2],))
    conn.execute(
        "INSERT INTO outbox_event_archive (id, aggregate_type, aggregate_id, event_type, payload,"
        " headers, status, attempts, max_attempts, priority, idempotency_key, next_attempt_at,"
        " created_at, updated_at, done_at, redrive_count)"
        " VALUES (999999, 'order', 'B', 'order.paid', '{}', '{}', 'done', 1, 5, 5, 'k-b', now(),"
        " now(), now(), now(), 0)"
    )
    conn.execute("UPDATE outbox_event SET redrive_count = 2 WHERE id = %s", (ids[3],))
    conn.commit()
    plan = service(db_dsn).plan(DeadEventFilter(), max_replays=2, rate=2)
    assert (plan.total, plan.over_replays, plan.aggregates) == (6, 1, 3)
    assert plan.estimate_seconds == 3
    assert {g.key: g.count for g in plan.groups["event_type"]} == {
        "order.paid": 3,
        "order.shipped": 3,
    }
    assert sorted(g.count for g in plan.groups["fingerprint"]) == [3, 3]
    assert [g.key for g in plan.groups["age"]] == ["< 1h"]
    assert "destination" not in plan.groups, "no destination column yet"
    assert (plan.moved_on, plan.moved_on_ids) == (2, ids[:2])
    assert (plan.key_taken, plan.key_taken_ids) == (1, [ids[2]])
    assert plan.to_json()["conflicts"]["aggregate_moved_on"]["count"] == 2


# -- the error group registry and diff --------------------------------------------------------


def test_diff_names_new_growing_quiet_and_resolved_groups(conn: Conn, db_dsn: str) -> None:
    deploy = datetime.now(UTC) - timedelta(minutes=10)
    before = deploy - timedelta(hours=1)

    def died(error: str, at: datetime, n: int = 1) -> list[int]:
        ids = dead(conn, [("x", n)], error=error)
        conn.execute("UPDATE outbox_event SET dead_at = %s WHERE id = ANY(%s)", (at, ids))
        conn.execute(
            "UPDATE outbox_error_fingerprint_seen SET first_seen_at = least(first_seen_at, %s)",
            (at,),
        )
        conn.commit()
        return ids

    died("KeyError: 'quiet'", before, 2)
    died("TimeoutError: growing 1", before)
    resolved = died("OSError: resolved 1", before)
    # The ones that die after the deploy are seen then (the registry's trigger).
    conn.execute("UPDATE outbox_error_fingerprint_seen SET first_seen_at = %s", (before,))
    conn.commit()
    dead(conn, [("y", 3)], error="TimeoutError: growing 2")
    dead(conn, [("z", 1)], error="ValueError: brand new {a}")
    OutboxRepository(db_dsn).retry_dead_events_batch(resolved, actor="ops")
    changes = {g.signature: (g.change, g.before, g.since) for g in classify_groups(
        OutboxRepository(db_dsn).connection, deploy)}  # fmt: skip
    assert changes["ValueError: brand new z"] == ("new", 0, 1)
    assert changes["TimeoutError: growing <n>"] == ("growing", 1, 3)
    assert changes["KeyError: '?'"] == ("quiet", 2, 0)
    assert changes["OSError: resolved <n>"][0] == "resolved"


# -- real workers -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_canary_with_real_workers_promotes_when_the_downstream_is_back(
    db_dsn: str, record_dir: Path
) -> None:
    ids = publish(db_dsn, 100, max_attempts=1)
    wait_until(lambda: statuses(db_dsn) == {"dead": 100}, 60, "all dead")
    (record_dir / "healthy").touch()
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("percent", 5), canary_success=100)
    result = svc.run(op.id, wait=60)
    assert result.phase == "completed" and result.redriven == 100, result
    wait_until(lambda: statuses(db_dsn) == {"done": 100}, 60, "all delivered")
    assert len(ids) == 100


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_canary_with_real_workers_stops_on_a_new_error(db_dsn: str, record_dir: Path) -> None:
    publish(db_dsn, 60, max_attempts=1)
    wait_until(lambda: statuses(db_dsn) == {"dead": 60}, 60, "all dead")
    (record_dir / "newerror").touch()
    svc = service(db_dsn)
    op = svc.start(DeadEventFilter(), actor="ops", canary=("count", 6), canary_success=0)
    result = svc.run(op.id, wait=60)
    assert result.phase == "stopped", result
    assert result.verdict is not None and result.verdict["new_fingerprints"]
    with psycopg.connect(db_dsn) as c:
        replayed = c.execute("SELECT count(*) FROM outbox_event WHERE redrive_count > 0").fetchone()
    assert replayed == (6,), "only the canary went out"


def test_an_operation_leaves_the_aggregate_of_a_held_event_dead(conn: Conn, db_dsn: str) -> None:
    a1, a2, a3, b1, b2 = dead(conn, [("A", 3), ("B", 2)])
    svc = service(db_dsn)
    # Another transaction (a second redrive, an edit) holds A's second event meanwhile.
    with psycopg.connect(db_dsn) as holder:
        holder.execute("SELECT id FROM outbox_event WHERE id = %s FOR UPDATE", (a2,))
        op = svc.run(svc.start(DeadEventFilter(), actor="ops").id)
    assert op.phase == "completed" and op.redriven == 2, op
    got = {i: s for i, (s, _) in states(conn, [a1, a2, a3, b1, b2]).items()}
    # A's third event would have overtaken the held one: A stays dead, B goes.
    assert got == {a1: "dead", a2: "dead", a3: "dead", b1: "pending", b2: "pending"}
