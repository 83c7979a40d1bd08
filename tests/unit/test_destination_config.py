"""Dispatcher.destination(): delivery controls a destination is configured with, checked when
the app is imported (before any worker starts)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatchbox import BreakerPolicy, Dispatcher
from dispatchbox.errors import ConfigurationError


def test_defaults_and_listing() -> None:
    dispatcher = Dispatcher()
    ledger = dispatcher.destination("ledger")
    dispatcher.destination("audit", breaker=None, rate_limit=50)
    assert [d.name for d in dispatcher.destinations()] == ["audit", "ledger"]
    assert ledger.breaker == BreakerPolicy(failures=5)
    assert ledger.health_check is None and ledger.health_check_timeout == 5.0
    assert ledger.rate_limit is None and not ledger.replay_dead_on_recovery
    assert dispatcher.destinations()[0].bucket_size == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"health_check": "not callable"}, "not callable"),
        ({"health_check_timeout": 0}, "health_check_timeout"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"burst": 5}, "burst needs a rate_limit"),
        ({"breaker": None, "replay_dead_on_recovery": True}, "needs a breaker"),
        ({"replay_rate": 0}, "replay_rate"),
    ],
)
def test_settings_that_cannot_work_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Dispatcher().destination("ledger", **kwargs)


@pytest.mark.parametrize(
    "policy",
    [
        {"failures": 0},
        {"failure_rate": 1.5},
        {"window": 0},
        {"cooldown": 10, "max_cooldown": 5},
        {"min_calls": 0},
    ],
)
def test_breaker_policies_that_cannot_work_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="BreakerPolicy"):
        BreakerPolicy(**policy)


def test_a_destination_is_configured_once_and_named_plainly() -> None:
    dispatcher = Dispatcher()
    dispatcher.destination("ledger")
    with pytest.raises(ConfigurationError, match="already configured"):
        dispatcher.destination("ledger")
    with pytest.raises(ConfigurationError, match="destination name"):
        dispatcher.destination("has space")
