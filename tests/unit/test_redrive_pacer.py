"""AdaptivePacer's reactions (pure logic) and the --canary sizes."""

from __future__ import annotations

import pytest

from dispatchbox.errors import InvalidFilter
from dispatchbox.redrive import AdaptivePacer, Health, PaceConfig, parse_canary


def health(done: int, errors: int, p90: float | None = 0.1) -> Health:
    return Health(done=done, dead=0, open=0, errors=errors, p90_seconds=p90)


def test_the_pace_grows_while_healthy_up_to_the_top_speed() -> None:
    pacer = AdaptivePacer(PaceConfig(start_rate=10, max_rate=100))
    rates = [pacer.observe(health(50, 0)).rate for _ in range(12)]
    assert rates[:3] == [20, 30, 40]
    assert rates[-1] == 100


def test_failures_halve_the_pace_and_a_dead_destination_pauses_it() -> None:
    pacer = AdaptivePacer(PaceConfig(start_rate=80, max_rate=100, min_rate=1))
    slowed = pacer.observe(health(60, 40))  # 40% failed > 20%
    assert (slowed.rate, slowed.paused) == (40, False) and "slowed" in slowed.reason
    paused = pacer.observe(health(1, 99))
    assert paused.paused and paused.rate == 1
    recovered = pacer.observe(health(50, 0))
    assert not recovered.paused and recovered.rate == 11
    assert pacer.slowdowns == 2


def test_latency_above_the_target_slows_and_few_outcomes_change_nothing() -> None:
    pacer = AdaptivePacer(PaceConfig(start_rate=50, max_rate=100, max_latency=2.0))
    assert pacer.observe(health(50, 0, p90=5.0)).rate == 25
    assert pacer.observe(health(3, 3)).reason == "too few outcomes yet"
    assert pacer.rate == 25
    # A few outcomes and no failure: enough to speed up (a slow pace never fills a window).
    assert pacer.observe(health(3, 0)).rate == 35


def test_an_open_breaker_pauses_whatever_the_sample_says() -> None:
    pacer = AdaptivePacer()
    decision = pacer.observe(health(100, 0), breaker_open=True)
    assert decision.paused and decision.reason == "breaker open"


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptivePacer(PaceConfig(start_rate=0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1%", ("percent", 1.0)), ("0.5%", ("percent", 0.5)), ("200", ("count", 200.0))],
)
def test_canary_sizes(text: str, expected: tuple[str, float]) -> None:
    assert parse_canary(text) == expected


@pytest.mark.parametrize("text", ["0", "0%", "101%", "x", "-3", "1.5"])
def test_bad_canary_sizes(text: str) -> None:
    with pytest.raises(InvalidFilter, match="--canary"):
        parse_canary(text)


def test_a_paused_pace_waits_for_a_probe_and_resumes_slowly_when_it_succeeds() -> None:
    pacer = AdaptivePacer(PaceConfig(start_rate=100, max_rate=100, min_rate=1))
    assert pacer.observe(health(0, 50)).paused
    assert pacer.observe(health(0, 0)).paused, "no outcome yet: still paused"
    assert pacer.observe(health(0, 1)).paused, "the probe failed: still paused"
    resumed = pacer.observe(health(1, 0))
    assert not resumed.paused and resumed.rate == 11
