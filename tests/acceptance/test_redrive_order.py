"""The plain redrive by filter keeps each ordered aggregate in its original order, with real
`dispatchbox worker` processes of tests/ordering_app.py (ordering="block"), and the dry run names
what would overtake a dead event the selection leaves out."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from dispatchbox import OutboxRepository
from dispatchbox.filters import DeadEventFilter
from tests.acceptance.test_delivery_ordering import _run, by_aggregate, calls
from tests.worker_helpers import counts, wait_for_workers, wait_until

AGGREGATES = "abcdefgh"
PER_AGGREGATE = 6


def dead_interleaved(dsn: str) -> dict[str, list[int]]:
    """Dead ord.block events, the aggregates' ids interleaved (a1 b1 ... h1 a2 b2 ...), so that
    batches of two split every aggregate across many batches."""
    ids: dict[str, list[int]] = {a: [] for a in AGGREGATES}
    with psycopg.connect(dsn) as conn:
        for _ in range(PER_AGGREGATE):
            for agg in AGGREGATES:
                row = conn.execute(
                    "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status,"
                    " attempts, last_error, last_error_at, dead_at, payload)"
                    " VALUES ('order', %s, 'ord.block', 'dead', 1,"
                    " 'ConnectionError: refused', now(), now(), '{\"sleep\": 0.005}')"
                    " RETURNING id",
                    (agg,),
                ).fetchone()
                assert row is not None
                ids[agg].append(int(row[0]))
    return ids


def delivered(record_dir: Path) -> dict[str, list[int]]:
    return {
        agg: [c[0] for c in cs if c[6] == "end"]
        for agg, cs in by_aggregate(calls(record_dir)).items()
    }


@pytest.mark.slow
def test_a_held_event_keeps_the_later_events_of_its_aggregate_dead_until_it_goes(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ids = dead_interleaved(db_dsn)
    total = len(AGGREGATES) * PER_AGGREGATE
    held_id = ids["a"][1]
    repo = OutboxRepository(db_dsn, batch_size=2)
    run = _run(db_dsn, record_dir, tmp_path, "--processes", "4")
    try:
        wait_for_workers(run, 4)
        # Another transaction (a second redrive, an edit) holds a's second event meanwhile.
        with psycopg.connect(db_dsn) as holder:
            holder.execute("SELECT id FROM outbox_event WHERE id = %s FOR UPDATE", (held_id,))
            first = repo.redrive_dead_events(actor="ops")
            # Everything but a's second event and the four after it; those stay dead.
            assert (first.processed, first.skipped) == (total - 5, 5)
            wait_until(lambda: counts(db_dsn)["done"] == total - 5, 60, "the rest delivered")
            assert counts(db_dsn)["dead"] == 5
        second = repo.redrive_dead_events(actor="ops")  # the holder is gone
        assert (second.processed, second.skipped) == (5, 0)
        wait_until(lambda: counts(db_dsn)["done"] == total, 60, "a delivered")
    finally:
        assert run.stop() == 0, run.log()
    assert delivered(record_dir) == ids, "every aggregate in its original (id) order"


@pytest.mark.slow
def test_batches_of_two_over_interleaved_aggregates_deliver_each_in_order(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ids = dead_interleaved(db_dsn)
    total = len(AGGREGATES) * PER_AGGREGATE
    run = _run(db_dsn, record_dir, tmp_path, "--processes", "4")
    try:
        wait_for_workers(run, 4)
        done = OutboxRepository(db_dsn, batch_size=2).retry_dead_events(actor="ops", rate=200)
        assert done == total
        wait_until(lambda: counts(db_dsn)["done"] == total, 60, "all delivered")
    finally:
        assert run.stop() == 0, run.log()
    assert delivered(record_dir) == ids


def test_the_dry_run_names_events_that_would_overtake_a_dead_event_left_out(
    db_dsn: str,
) -> None:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status,"
            " attempts, last_error, dead_at, destination)"
            " VALUES ('order', 'x', 'ord.block', 'dead', 1, 'KeyError: sku', now(), 'ledger'),"
            "        ('order', 'x', 'ord.block', 'dead', 1, 'ConnectionError: refused', now(),"
            "         'ledger'),"
            "        ('order', 'y', 'ord.block', 'dead', 1, 'ConnectionError: refused', now(),"
            "         'mail')"
            " RETURNING id"
        ).fetchall()
    x1, x2, y1 = (int(r[0]) for r in rows)
    service = OutboxRepository(db_dsn).redrive()
    plan = service.plan(DeadEventFilter(error_contains="ConnectionError"))
    assert plan.total == 2
    assert (plan.behind, plan.behind_ids) == (1, [x2]), "x2 would overtake x1, left dead"
    assert plan.to_json()["conflicts"]["behind_dead_event"] == {"count": 1, "ids": [x2]}
    # The whole aggregate: nothing is left behind. A destination narrows the selection.
    assert service.plan(DeadEventFilter()).behind == 0
    by_destination = service.plan(DeadEventFilter(destination="mail"))
    assert (by_destination.total, by_destination.aggregates) == (1, 1)
    assert x1 and y1
