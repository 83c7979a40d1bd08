"""Counts in alert messages read as `db status` shows them."""

from __future__ import annotations

from datetime import UTC, datetime

from dispatchbox.maintenance.alert_text import counted
from dispatchbox.outbox_status import OutboxStatus


def test_exact_counts_are_plain_and_estimates_are_marked() -> None:
    status = OutboxStatus(
        values={"pending": 10_412_000, "running": 12, "dead": 3},
        estimated=frozenset({"pending"}),
        analyzed_at=datetime(2026, 12, 4, tzinfo=UTC),
    )
    assert counted(status, "pending") == "~10,412,000"
    assert counted(status, "running") == "12"
    assert counted(status, "dead") == "3"


def test_a_count_over_the_cap_with_no_statistics_says_more_than_the_cap() -> None:
    # Never analysed: outbox_status keeps the cap (10,001) as the value; that is no estimate.
    status = OutboxStatus(
        values={"pending": 10_001, "running": 0}, estimated=frozenset({"pending"})
    )
    assert counted(status, "pending") == "more than 10,000"
    assert counted(status, "running") == "0"
