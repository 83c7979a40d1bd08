"""ConsoleStore on a real database: its one-pass groups agree with the repository's counts, the
capped count caps, and edit-and-redrive changes only a dead event, audited with its diff."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from dispatchbox import OutboxRepository, publish_many
from dispatchbox.console import store as store_module
from dispatchbox.console.store import ConsoleStore, payload_checksum
from dispatchbox.errors import EventNotDead
from dispatchbox.filters import DeadEventFilter
from dispatchbox.fingerprint import fingerprint

ERRORS = [
    ("pay.failed", "order", "TimeoutError: gateway timed out after {i} s"),
    ("pay.failed", "order", "KeyError: 'customer_{i}'"),
    ("mail.sent", "user", "SMTPError: 552 mailbox {i} full"),
    ("mail.sent", "order", "TimeoutError: gateway timed out after {i} s"),
]
# Where each dead event died (i % 3); None: before migration 0007 recorded destinations.
DESTINATIONS = ["erp", "smtp", None]


@pytest.fixture
def store(db_dsn: str) -> Iterator[ConsoleStore]:
    pool: ConnectionPool[Any] = ConnectionPool(db_dsn, min_size=1, max_size=2, open=True)
    try:
        yield ConsoleStore(pool)
    finally:
        pool.close()


def _seed(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        ids = publish_many(
            conn,
            [
                {
                    "aggregate_type": agg,
                    "aggregate_id": str(i),
                    "event_type": kind,
                    "payload": {"n": i},
                }
                for i in range(40)
                for kind, agg, _ in [ERRORS[i % 4]]
            ],
        )
        for i, event_id in enumerate(ids[:36]):  # the last four stay pending
            conn.execute(
                "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
                "last_error = %s, dead_at = now() - make_interval(hours => %s), destination = %s "
                "WHERE id = %s",
                [ERRORS[i % 4][2].format(i=i), i, DESTINATIONS[i % 3], event_id],
            )
    return ids


FILTERS = [
    DeadEventFilter(),
    DeadEventFilter(event_type="pay.failed"),
    DeadEventFilter(aggregate_type="order"),
    DeadEventFilter(error_contains="TIMED OUT"),
    DeadEventFilter(error_fingerprint=fingerprint("TimeoutError: gateway timed out after 1 s")),
    DeadEventFilter(since=datetime.now(UTC) - timedelta(hours=10)),
    DeadEventFilter(event_type="mail.sent", error_contains="mailbox"),
    DeadEventFilter(destination="erp"),
    DeadEventFilter(destination="smtp", error_contains="timed out"),
    DeadEventFilter(destination="nowhere"),
]


@pytest.mark.parametrize("flt", FILTERS)
def test_groups_add_up_to_the_repository_count(
    store: ConsoleStore, db_dsn: str, flt: DeadEventFilter
) -> None:
    _seed(db_dsn)
    repo = OutboxRepository(db_dsn)
    found = store.error_groups(flt, top=100)
    stats = repo.dead_event_stats(filter=flt, by=["error", "event_type"])
    assert found.total == repo.count_dead_events(filter=flt) == stats.total
    assert [(g.fingerprint, g.count, g.example_id, g.signature) for g in found.groups] == [
        (g.fingerprint, g.count, g.example_id, g.signature) for g in stats.by_error or []
    ]
    assert [(t.key, t.count) for t in found.by_type] == [
        (t.key, t.count) for t in stats.by_event_type or []
    ]
    for group in found.groups:
        assert sum(n for _, n in group.targets) == group.count
    assert min(store.count_capped(flt, 5), 6) == min(found.total, 6)


def test_the_timeout_group_hits_both_types_and_the_overview_counts_states(
    store: ConsoleStore, db_dsn: str
) -> None:
    _seed(db_dsn)
    timeouts = fingerprint("TimeoutError: gateway timed out after 1 s")
    groups = {g.fingerprint: g for g in store.error_groups(DeadEventFilter(), top=10).groups}
    assert groups[timeouts].targets == [("mail.sent", 9), ("pay.failed", 9)]
    view = store.overview()
    assert (view.pending, view.running, view.dead) == (4, 0, 36)
    assert sum(n for _, n in view.deaths) == 24  # dead within the last 24 hours: i = 0..23
    assert store.count_capped(DeadEventFilter(), 10) == 11


def test_the_destination_filter_narrows_groups_and_counts_and_groups_show_destinations(
    store: ConsoleStore, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(db_dsn)
    everything = store.error_groups(DeadEventFilter(), top=10, destinations=True)
    erp = store.error_groups(DeadEventFilter(destination="erp"), top=10, destinations=True)
    assert (everything.total, erp.total) == (36, 12)  # i % 3 == 0 of i = 0..35
    assert store.count_capped(DeadEventFilter(destination="erp"), 100) == 12
    assert store.count_capped(DeadEventFilter(destination="nowhere"), 100) == 0
    # Each group shown lists where its events died, adding up to its count; filtered, only erp.
    for group in everything.groups:
        assert sum(n for _, n in group.destinations) == group.count
        assert {d for d, _ in group.destinations} <= {"erp", "smtp", None}
    assert any(None in {d for d, _ in g.destinations} for g in everything.groups)
    for group in erp.groups:
        assert group.destinations == [("erp", group.count)]
    # The summary (migration 0012) serves this filter: every group's destinations are exact,
    # whatever the sample size.
    monkeypatch.setattr(store_module, "GROUP_DESTINATION_SAMPLE", 2)
    exact = store.error_groups(DeadEventFilter(), top=10, destinations=True).groups
    assert [(g.fingerprint, g.destinations) for g in exact] == [
        (g.fingerprint, g.destinations) for g in everything.groups
    ]
    assert not any(g.destinations_sampled for g in exact)
    # A filter it cannot serve (error text): above the sample size a group's destinations are
    # counted among its newest events only.
    by_text = DeadEventFilter(error_contains="Error")
    sampled = store.error_groups(by_text, top=10, destinations=True).groups
    assert all(g.destinations_sampled and sum(n for _, n in g.destinations) == 2 for g in sampled)
    assert not any(g.destinations_sampled for g in everything.groups)
    # Without the flag (the overview, the dry run) the outbox rows are not read.
    assert all(g.destinations == [] for g in store.error_groups(DeadEventFilter(), top=10).groups)
    # The overview counts the dead per destination, most numerous first.
    assert store.overview().by_destination == [("erp", 12), ("smtp", 12), (None, 12)]


def test_edit_and_redrive_changes_only_a_dead_event(store: ConsoleStore, db_dsn: str) -> None:
    ids = _seed(db_dsn)
    dead, pending = ids[0], ids[-1]
    assert store.edit_and_redrive(10**12, {"x": 1}, actor="alice") is None
    with pytest.raises(EventNotDead):
        store.edit_and_redrive(pending, {"x": 1}, actor="alice")
    result = store.edit_and_redrive(dead, {"n": 0, "customer": "C-1"}, actor="alice")
    assert result is not None
    assert '+  "customer": "C-1",' in result.diff
    with psycopg.connect(db_dsn) as conn:
        rows = dict(
            (i, (s, p, r, by))
            for i, s, p, r, by in conn.execute(
                "SELECT id, status, payload, redrive_count, last_redriven_by FROM outbox_event "
                "WHERE id = ANY(%s)",
                [[dead, pending]],
            ).fetchall()
        )
    assert rows[dead] == ("pending", {"n": 0, "customer": "C-1"}, 1, "alice")
    assert rows[pending] == ("pending", {"n": 39}, 0, None)
    (entry,) = store.event_audit(dead)
    assert (entry.actor, entry.action, entry.event_ids, entry.affected) == (
        "alice",
        "retry",
        [dead],
        1,
    )
    assert entry.details["checksum_before"] == payload_checksum({"n": 0})
    assert entry.details["checksum_after"] == payload_checksum({"customer": "C-1", "n": 0})
    with psycopg.connect(db_dsn) as conn:
        stored, computed = conn.execute(
            "SELECT payload_sha256, outbox_payload_sha256(payload) FROM outbox_event WHERE id = %s",
            [dead],
        ).fetchone() or (None, None)
    # The edit records the new checksum, the one publish would have taken: an export of the
    # edited event reports it intact.
    assert stored == computed == entry.details["checksum_after"]
    assert store.event_audit(pending) == []
    # A second edit finds it no longer dead.
    with pytest.raises(EventNotDead):
        store.edit_and_redrive(dead, {"n": 1}, actor="alice")
