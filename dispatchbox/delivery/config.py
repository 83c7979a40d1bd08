"""What a destination's delivery controls are: BreakerPolicy, DestinationConfig, and the
transient-error classification that replay uses. Plain data; imports nothing of dispatchbox's
but its errors (the Dispatcher imports this module)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dispatchbox.errors import ConfigurationError

HealthCheck = Callable[[], object | Awaitable[object]]
Classifier = Callable[[str], bool]

# Error types whose deaths say "the destination was unreachable", not "the event is bad".
TRANSIENT_TYPES = frozenset(
    {
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "ConnectionAbortedError",
        "BrokenPipeError",
        "TimeoutError",
        "HandlerTimeout",
        "LeaseExpired",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ConnectError",
        "RemoteProtocolError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_TEXT = re.compile(
    r"connection refused|connection reset|timed? ?out|temporar(il)?y unavailable|"
    r"service unavailable|too many requests|\b429\b|\b5\d\d\b|unreachable",
    re.IGNORECASE,
)


def is_transient(last_error: str) -> bool:
    """Whether an event that died of ``last_error`` ("ErrorType: message", as the worker records
    it) died of its destination being down: a connection refused or reset, a timeout, an HTTP
    5xx or 429. Used by replay after a recovery; pass your own to
    ``Dispatcher.destination(..., transient=...)``. A PermanentError is never transient, whatever
    this function says (replay checks that first)."""
    error_type, _, message = last_error.partition(": ")
    if error_type.rsplit(".", 1)[-1] in TRANSIENT_TYPES:
        return True
    return bool(_TRANSIENT_TEXT.search(message or error_type))


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a destination's breaker opens and how long it stays open."""

    # Consecutive failed attempts that open it.
    failures: int = 5
    # Or: this fraction of the attempts in the window failed (None: no rate rule)...
    failure_rate: float | None = 0.5
    # ...over this many seconds...
    window: float = 60.0
    # ...once the window holds at least this many attempts.
    min_calls: int = 20
    # Seconds open before the first probe; doubled after every failed probe, up to max_cooldown.
    cooldown: float = 30.0
    max_cooldown: float = 600.0

    def __post_init__(self) -> None:
        if type(self.failures) is not int or self.failures < 1:
            raise ConfigurationError("BreakerPolicy.failures must be a whole number >= 1")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ConfigurationError("BreakerPolicy.failure_rate must be in (0, 1] or None")
        if self.window <= 0 or self.cooldown <= 0 or self.max_cooldown < self.cooldown:
            raise ConfigurationError(
                "BreakerPolicy needs window > 0, cooldown > 0 and max_cooldown >= cooldown"
            )
        if type(self.min_calls) is not int or self.min_calls < 1:
            raise ConfigurationError("BreakerPolicy.min_calls must be a whole number >= 1")


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """A destination's controls, as ``Dispatcher.destination()`` recorded them."""

    name: str
    breaker: BreakerPolicy | None = field(default_factory=BreakerPolicy)
    health_check: HealthCheck | None = None
    health_check_timeout: float = 5.0
    rate_limit: float | None = None  # events per second across every process and host
    burst: float | None = None  # tokens the bucket holds (default: one second's worth)
    replay_dead_on_recovery: bool = False
    transient: Classifier = is_transient
    replay_rate: float = 500.0  # events per second a replay redrives

    def __post_init__(self) -> None:
        if self.health_check is not None and not callable(self.health_check):
            raise ConfigurationError(f"health_check of destination {self.name!r} is not callable")
        if self.health_check_timeout <= 0:
            raise ConfigurationError("health_check_timeout must be positive")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigurationError(f"rate_limit of {self.name!r} must be positive or None")
        if self.burst is not None and (self.rate_limit is None or self.burst < 1):
            raise ConfigurationError("burst needs a rate_limit and must be at least 1")
        if self.replay_dead_on_recovery and self.breaker is None:
            raise ConfigurationError("replay_dead_on_recovery needs a breaker")
        if not callable(self.transient):
            raise ConfigurationError("transient must be a function of the last error text")
        if not self.replay_rate > 0:
            raise ConfigurationError("replay_rate must be positive")

    @property
    def bucket_size(self) -> float:
        assert self.rate_limit is not None
        return self.burst if self.burst is not None else max(1.0, self.rate_limit)
