"""Delivery controls' configuration, without a database: ordering modes, ttl, backlog limits,
the expiry deadline, and the ordering plan the claim receives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from dispatchbox import Dispatcher, EventExpired, OutboxEvent, set_backlog_limit
from dispatchbox.delivery import backpressure
from dispatchbox.delivery.expiry import Expiry
from dispatchbox.delivery.ordering import OrderingPlan
from dispatchbox.errors import ConfigurationError


def _noop(event: OutboxEvent) -> None:
    """A handler."""


def test_ordering_and_ttl_are_checked_at_registration() -> None:
    d = Dispatcher()
    with pytest.raises(ConfigurationError, match="ordering for 'a' must be one of block, skip"):
        d.register("a", _noop, ordering="strict")
    for bad in (0, -1, True, "5"):
        with pytest.raises(ConfigurationError, match="ttl for 'a' must be a positive number"):
            d.register("a", _noop, ttl=bad)  # type: ignore[arg-type]
    d.handler("a", ordering="park", ttl=2)(_noop)
    spec = d.get("a")
    assert spec is not None and (spec.ordering, spec.ttl) == ("park", 2.0)


def test_the_plan_names_each_mode_and_is_none_without_ordering() -> None:
    d = Dispatcher()
    d.register("plain", _noop)
    assert OrderingPlan.of(d) is None
    d.register("b", _noop, ordering="block")
    d.register("s", _noop, ordering="skip")
    d.batch_handler("p", ordering="park")(lambda events: None)
    plan = OrderingPlan.of(d)
    assert plan is not None
    assert plan.params() == {"ordered": ["b", "s", "p"], "skip": ["s"], "park": ["p"]}


@dataclass
class _Event:
    event_type: str
    created_at: datetime
    expires_at: datetime | None


def test_the_earlier_of_expires_at_and_ttl_is_the_deadline() -> None:
    d = Dispatcher()
    d.register("short", _noop, ttl=60)
    expiry = Expiry(d)
    now = datetime.now(UTC)
    assert expiry.deadline(_Event("other", now, None)) is None
    assert expiry.deadline(_Event("short", now, None)) == pytest.approx(now.timestamp() + 60)
    soon = now + timedelta(seconds=5)
    assert expiry.deadline(_Event("short", now, soon)) == pytest.approx(soon.timestamp())
    expiry.check(_Event("short", now, None))  # not yet
    with pytest.raises(EventExpired, match="not delivered within its handler's ttl of 60s"):
        expiry.check(_Event("short", now - timedelta(seconds=61), None))
    with pytest.raises(EventExpired, match="not delivered by its expires_at"):
        expiry.check(_Event("other", now, now - timedelta(seconds=1)))
    assert EventExpired.error_type == "expired"


def test_backlog_limits_are_checked() -> None:
    try:
        with pytest.raises(ConfigurationError, match="whole number"):
            set_backlog_limit("a", -1)
        with pytest.raises(ConfigurationError, match="whole number"):
            set_backlog_limit("a", 1.5)  # type: ignore[arg-type]
        set_backlog_limit("a", 10)
        set_backlog_limit(None, 100)
        set_backlog_limit("a", None)
    finally:
        backpressure.clear()
