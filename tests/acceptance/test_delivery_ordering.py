"""Ordering per aggregate and expiry in real `dispatchbox worker` processes (tests/ordering_app.py):
no two events of one aggregate in flight at once, publish order kept, other aggregates never
waiting; block, skip and park behind a failing event; expired events never delivered."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository, publish_many
from tests.worker_helpers import FAST, WorkerRun, counts, start, wait_for_workers, wait_until

APP = ["--app", "tests.ordering_app:dispatcher"]

Call = tuple[int, str, int, int, float, float, str]  # id, aggregate, attempts, pid, start, end, how


def calls(record_dir: Path) -> list[Call]:
    """Every handler call, from its start and end (or fail) lines, in start order."""
    open_: dict[tuple[int, int, int], tuple[str, float]] = {}
    out: list[Call] = []
    for path in record_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            phase, event_id, agg, attempts, pid, at = line.split()
            key = (int(event_id), int(attempts), int(pid))
            if phase == "start":
                open_[key] = (agg, float(at))
            else:
                agg0, started = open_.pop(key)
                out.append((key[0], agg0, key[1], key[2], started, float(at), phase))
    assert not open_, f"calls without an end: {open_}"
    return sorted(out, key=lambda c: c[4])


def by_aggregate(all_calls: list[Call]) -> dict[str, list[Call]]:
    grouped: dict[str, list[Call]] = defaultdict(list)
    for c in all_calls:
        grouped[c[1]].append(c)
    return grouped


def _publish(dsn: str, events: list[dict[str, Any]]) -> list[int]:
    with psycopg.connect(dsn) as conn:
        ids = publish_many(conn, events)
        conn.commit()
    return ids


def _event(agg: str, event_type: str, **payload: Any) -> dict[str, Any]:
    return {
        "aggregate_type": "order",
        "aggregate_id": agg,
        "event_type": event_type,
        "payload": payload,
    }


def _all_finished(dsn: str, total: int) -> bool:
    c = counts(dsn)
    return c["done"] + c["dead"] == total and not c["pending"] and not c["running"]


def _run(db_dsn: str, record_dir: Path, tmp_path: Path, *args: str) -> WorkerRun:
    return start(db_dsn, record_dir, tmp_path, *APP, *FAST, *args)


@pytest.mark.slow
def test_four_processes_keep_each_aggregate_in_order_one_at_a_time(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    aggregates, per = 120, 8
    kinds = ["ord.block", "ord.async", "ord.batch"]
    events = []
    for k in range(per):  # interleaved, as many aggregates publish at once
        for a in range(aggregates):
            fail = 2 if (a * per + k) % 13 == 0 else 0
            events.append(_event(f"a{a}", kinds[a % 3], fail_times=fail))
    events += [_event(f"p{i}", "plain.ok") for i in range(200)]
    run = _run(
        db_dsn, record_dir, tmp_path, "--processes", "4", "--concurrency", "4",
        "--batch-size", "50",
    )  # fmt: skip
    try:
        wait_for_workers(run, 4)
        ids = _publish(db_dsn, events)
        wait_until(lambda: _all_finished(db_dsn, len(ids)), 180, "every event delivered")
    finally:
        assert run.stop() == 0, run.log()
    assert counts(db_dsn)["done"] == len(ids)
    grouped = by_aggregate(calls(record_dir))
    pids = {c[3] for agg, cs in grouped.items() if agg.startswith("a") for c in cs}
    assert len(pids) >= 3, "the ordered events were spread over the processes"
    for agg, cs in grouped.items():
        if not agg.startswith("a"):
            continue
        for before, after in itertools.pairwise(cs):
            assert after[4] >= before[5], f"{agg}: {after[0]} started before {before[0]} ended"
        delivered = [c[0] for c in cs if c[6] == "end"]
        assert delivered == sorted(delivered) and len(delivered) == per, agg
        # block: nothing of the aggregate runs between a failed attempt and its success
        started = [c[0] for c in cs]
        assert started == sorted(started), f"{agg}: a later event ran before an earlier one's end"


def test_block_waits_and_skip_goes_on_behind_a_failing_event(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    b = _publish(db_dsn, [_event("b", "ord.block", fail_times=1)] + [_event("b", "ord.block")] * 2)
    s = _publish(db_dsn, [_event("s", "ord.skip", fail_times=1)] + [_event("s", "ord.skip")] * 2)
    run = _run(db_dsn, record_dir, tmp_path, "--processes", "2", "--backoff-base", "2",
               "--backoff-max", "2")  # fmt: skip
    try:
        wait_until(lambda: _all_finished(db_dsn, 6), 60, "every event delivered")
    finally:
        assert run.stop() == 0, run.log()
    grouped = by_aggregate(calls(record_dir))
    assert [(c[0], c[6]) for c in grouped["b"]] == [
        (b[0], "fail"), (b[0], "end"), (b[1], "end"), (b[2], "end"),
    ]  # fmt: skip
    assert [(c[0], c[6]) for c in grouped["s"]] == [
        (s[0], "fail"), (s[1], "end"), (s[2], "end"), (s[0], "end"),
    ]  # fmt: skip


def test_park_then_redrive_delivers_the_aggregate_in_order(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "poison"
    flag.write_text("x")
    p = _publish(db_dsn, [_event("p", "ord.park", poison_while=str(flag))]
                 + [_event("p", "ord.park")] * 3)  # fmt: skip
    q = _publish(db_dsn, [_event("q", "ord.park")] * 3)
    run = _run(db_dsn, record_dir, tmp_path, "--processes", "2")
    try:
        wait_until(lambda: _all_finished(db_dsn, 7), 60, "q delivered, p dead or parked")
        with psycopg.connect(db_dsn) as conn:
            rows = conn.execute(
                "SELECT id, status, parked_by, last_error FROM outbox_event ORDER BY id"
            ).fetchall()
        assert [(r[1], r[2]) for r in rows[:4]] == [("dead", None)] + [("dead", p[0])] * 3
        assert all(r[1] == "done" for r in rows[4:])
        assert rows[1][3] == f"parked: behind dead event {p[0]} of order p"
        assert {c[0] for c in calls(record_dir)} == {p[0], *q}, "parked events never ran"
        flag.unlink()  # the downstream is fixed
        assert OutboxRepository(db_dsn).retry_dead_event(p[0], actor="ops") is True
        wait_until(lambda: counts(db_dsn)["done"] == 7, 60, "the aggregate delivered")
    finally:
        assert run.stop() == 0, run.log()
    delivered = [c[0] for c in by_aggregate(calls(record_dir))["p"] if c[6] == "end"]
    assert delivered == p


def test_expired_events_are_dead_and_never_delivered(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    with psycopg.connect(db_dsn) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    past = _publish(db_dsn, [{**_event(str(i), "plain.ok"), "expires_at": now} for i in range(5)])
    later = now + timedelta(hours=1)
    kept = _publish(db_dsn, [{**_event(str(i), "plain.ok"), "expires_at": later} for i in range(3)])
    ttl = _publish(db_dsn, [_event(str(i), "ttl.short") for i in range(4)])
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # the ttl (0.5 s) passes first
        wait_until(
            lambda: conn.execute("SELECT now() > max(created_at) + interval '0.6 s'"
                                 " FROM outbox_event").fetchone()[0],  # type: ignore[index]
            10, "the ttl to pass",
        )  # fmt: skip
    run = _run(db_dsn, record_dir, tmp_path, "--processes", "1", "--concurrency", "1")
    try:
        wait_for_workers(run, 1)
        # Claimed in time, then waiting behind a slow call in the one thread past their expiry.
        with psycopg.connect(db_dsn) as conn:
            soon = conn.execute("SELECT now() + interval '1 s'").fetchone()[0]  # type: ignore[index]
        slow = _publish(
            db_dsn,
            [{**_event("slow", "exp.slow", sleep=2.5), "expires_at": soon}]
            + [{**_event(str(i), "exp.slow"), "expires_at": soon} for i in range(4)],
        )
        total = len(past + kept + ttl + slow)
        wait_until(lambda: _all_finished(db_dsn, total), 60, "every event finished")
    finally:
        assert run.stop() == 0, run.log()
    ran = {c[0] for c in calls(record_dir)}
    assert ran == {*kept, slow[0]}, "only unexpired events were delivered"
    with psycopg.connect(db_dsn) as conn:
        dead = dict(conn.execute("SELECT id, last_error FROM outbox_event WHERE status = 'dead'"))
    assert set(dead) == {*past, *ttl, *slow[1:]}
    assert all(err.startswith("expired: not delivered") for err in dead.values())
    assert "ttl of 0.5s" in dead[ttl[0]] and "expires_at" in dead[past[0]]
