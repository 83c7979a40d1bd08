"""The pace of a health-paced redrive: additive increase, multiplicative decrease (AIMD), on
the live outcome of what the redrive itself sent, and a pause while a breaker is open.

Pure logic (no database, no clock): the service feeds it Health samples and asks for the rate,
so its reactions are unit-tested exactly and the benchmark measures them end to end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class BreakerGate(Protocol):
    """Seam for the per-destination circuit breakers (issue 14): which of these destinations
    has its breaker open now. A paced redrive sends nothing while one is open."""

    def open_destinations(self, destinations: Iterable[str]) -> set[str]: ...


class NoBreakers:
    """No circuit breakers known: never pauses (the default until breakers are wired in)."""

    def open_destinations(self, destinations: Iterable[str]) -> set[str]:
        return set()


@dataclass(frozen=True)
class Health:
    """What the recently redriven events did since they were sent."""

    done: int
    dead: int
    open: int  # still pending or running
    errors: int  # failed attempts recorded
    p90_seconds: float | None  # redrive-to-done latency of the done ones

    @property
    def failure_rate(self) -> float | None:
        """Failed attempts over attempts that finished; None before any finished."""
        finished = self.done + self.errors
        return None if finished == 0 else self.errors / finished


@dataclass(frozen=True)
class PaceConfig:
    """Every rate in events per second."""

    # Where the pace starts, and the most it may reach (--rate caps it).
    start_rate: float = 50.0
    max_rate: float = 1000.0
    # It never falls below this while healthy samples are missing (it still pauses).
    min_rate: float = 1.0
    # Slow down when more than this share of finished attempts failed...
    max_failure_rate: float = 0.2
    # ...or when the 90th percentile of redrive-to-done seconds passes this (None: ignore).
    max_latency: float | None = 30.0
    # Pause (send nothing) while the failure rate is at least this: the destination is down.
    pause_failure_rate: float = 0.9
    # Fewer finished attempts than this in a sample say nothing yet.
    min_samples: int = 10
    # On a bad sample the rate is multiplied by this; on a good one it grows by
    # max_rate * increase.
    decrease: float = 0.5
    increase: float = 0.1


@dataclass(frozen=True)
class Decision:
    rate: float
    paused: bool
    reason: str


class AdaptivePacer:
    def __init__(self, config: PaceConfig | None = None) -> None:
        self.config = config or PaceConfig()
        cfg = self.config
        if not 0 < cfg.min_rate <= cfg.start_rate <= cfg.max_rate:
            raise ValueError("rates must satisfy 0 < min_rate <= start_rate <= max_rate")
        self.rate = cfg.start_rate
        self.paused = False
        self.slowdowns = 0

    def observe(self, health: Health, *, breaker_open: bool = False) -> Decision:
        cfg = self.config
        if breaker_open:
            self.paused = True
            return Decision(self.rate, True, "breaker open")
        failure = health.failure_rate
        finished = health.done + health.errors
        # Paused, the service sends a probe now and then: one outcome is enough to go on. Running,
        # a few outcomes without a failure are enough to speed up (at a slow pace, a window
        # never holds min_samples), but failures among a few are not yet enough to slow down.
        if failure is None or finished < (1 if self.paused else cfg.min_samples):
            if self.paused or failure is None or health.errors:
                return Decision(self.rate, self.paused, "too few outcomes yet")
            self.rate = min(cfg.max_rate, self.rate + cfg.max_rate * cfg.increase)
            return Decision(self.rate, False, "healthy")
        if failure >= cfg.pause_failure_rate:
            self.paused = True
            self.rate = cfg.min_rate
            self.slowdowns += 1
            return Decision(self.rate, True, f"failure rate {failure:.0%}: paused")
        self.paused = False
        slow = cfg.max_latency is not None and (health.p90_seconds or 0) > cfg.max_latency
        if failure > cfg.max_failure_rate or slow:
            self.rate = max(cfg.min_rate, self.rate * cfg.decrease)
            self.slowdowns += 1
            why = f"failure rate {failure:.0%}" if not slow else f"p90 {health.p90_seconds:.1f}s"
            return Decision(self.rate, False, f"{why}: slowed")
        self.rate = min(cfg.max_rate, self.rate + cfg.max_rate * cfg.increase)
        return Decision(self.rate, False, "healthy")
