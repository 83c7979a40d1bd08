"""Dispatcher: which handler runs for which event type, with its timeout and backoff."""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from dispatchbox.delivery.config import (
    BreakerPolicy,
    Classifier,
    DestinationConfig,
    HealthCheck,
    is_transient,
)
from dispatchbox.errors import ConfigurationError
from dispatchbox.events import OutboxEvent

Handler = Callable[[OutboxEvent], Any]
BatchHandler = Callable[[list[OutboxEvent]], Any]
H = TypeVar("H", bound=Handler)
# Destination names appear in CLI flags, metric labels and URLs: keep them plain.
_DESTINATION_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
B = TypeVar("B", bound=BatchHandler)
ORDERING_MODES = ("block", "skip", "park")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter: ``min(cap, base * factor**(attempt-1))``, then up to
    ``jitter`` of it taken off at random so that events failing together do not retry together."""

    base: float = 1.0  # seconds before the first retry (before jitter)
    factor: float = 2.0  # growth per attempt
    cap: float = 300.0  # the longest wait, seconds
    jitter: float = 0.5  # fraction of the delay randomised (0: none, 1: full jitter)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                "backoff needs base >= 0, cap >= 0, factor >= 1 and 0 <= jitter <= 1"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        # Cap the exponent first so huge attempt counts cannot overflow a float.
        raw = self.cap if exponent > 64 else min(self.cap, self.base * self.factor**exponent)
        return raw * (1.0 - self.jitter * random.random())


@dataclass(frozen=True, slots=True, kw_only=True)
class _SpecCommon:
    """What every handler spec has, whether it takes one event or a list."""

    event_type: str
    is_async: bool
    timeout: float | None  # None: the worker's --handler-timeout
    backoff: BackoffPolicy | None  # None: the worker's policy
    # The system this handler talks to: breakers, rate limits and dead letters are kept per
    # destination. Handlers that name none each get their own, named after the event type.
    destination: str = ""
    # Per-aggregate ordering ("block", "skip", "park" or None) and time to live in seconds,
    # counted from publish (None: only the event's own expires_at); docs: delivery-controls.md.
    ordering: str | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventHandlerSpec(_SpecCommon):
    """A handler called with one event (``@dispatcher.handler``)."""

    func: Handler
    max_batch: None = None  # one event per call


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchHandlerSpec(_SpecCommon):
    """A handler called with a list of events (``@dispatcher.batch_handler``, a route's relay)."""

    func: BatchHandler
    max_batch: int  # most events per call


#: What the dispatcher holds for an event type: ``isinstance`` tells which kind of call it takes.
HandlerSpec = EventHandlerSpec | BatchHandlerSpec


@runtime_checkable
class RouteTarget(Protocol):
    """What ``Dispatcher.route`` relays to: a built-in destination (dispatchbox.destinations) or
    any object of this shape. ``deliver`` sends a batch; it raises BatchFailure for the events
    that failed, or any exception for all of them."""

    name: str
    max_batch: int
    timeout: float | None

    def deliver(self, events: Sequence[OutboxEvent]) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str  # fnmatch pattern over event types: "order.*", "invoice.issued"
    target: RouteTarget
    backoff: BackoffPolicy | None


class Dispatcher:
    """Registry of handlers, one per event type, and of routes to destinations.

    >>> dispatcher = Dispatcher()
    >>> @dispatcher.handler("order.created")
    ... def send_confirmation(event: OutboxEvent) -> None: ...
    >>> @dispatcher.batch_handler("order.paid", max_batch=500)
    ... def forward_to_broker(events: list[OutboxEvent]) -> None: ...
    """

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        self._routes: list[Route] = []
        self._routed: dict[str, HandlerSpec | None] = {}  # event type -> its route's spec
        self._targets: dict[str, RouteTarget] = {}  # destination name -> target
        self._destinations: dict[str, DestinationConfig] = {}  # as destination() set them

    def route(self, pattern: str, *, to: RouteTarget, backoff: BackoffPolicy | None = None) -> None:
        """Relay every event whose type matches ``pattern`` (fnmatch: ``order.*``,
        ``invoice.issued``) to the destination ``to``, in batches of its ``max_batch``.

        A handler registered for the exact type wins over every route; among routes the first
        registered that matches wins (like a routing table), so put narrow patterns first. The
        same pattern twice, or two different destinations under one name, is a
        ConfigurationError."""
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigurationError("a route's pattern must be a non-empty string")
        if not isinstance(to, RouteTarget):
            raise ConfigurationError(
                f"route {pattern!r}: to= must be a destination (name, max_batch, timeout, "
                f"deliver), got {type(to).__name__}"
            )
        if not _DESTINATION_NAME.fullmatch(str(to.name)):
            raise ConfigurationError(
                f"route {pattern!r}: destination name must be 1-100 letters, digits or "
                f". _ : -, got {to.name!r}"
            )
        if type(to.max_batch) is not int or to.max_batch < 1:
            raise ConfigurationError(f"route {pattern!r}: max_batch must be at least 1")
        if any(r.pattern == pattern for r in self._routes):
            raise ConfigurationError(f"a route for {pattern!r} is already registered")
        known = self._targets.get(to.name)
        if known is not None and known is not to:
            raise ConfigurationError(
                f"two different destinations are named {to.name!r}: give each its own name="
            )
        self._targets[to.name] = to
        self._routes.append(Route(pattern, to, backoff))
        self._routed.clear()

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def route_targets(self) -> dict[str, RouteTarget]:
        """The routed destinations by name."""
        return dict(self._targets)

    def destination(
        self,
        name: str,
        *,
        health_check: HealthCheck | None = None,
        health_check_timeout: float = 5.0,
        breaker: BreakerPolicy | None = BreakerPolicy(),  # frozen: one shared default is safe
        rate_limit: float | None = None,
        burst: float | None = None,
        replay_dead_on_recovery: bool = False,
        transient: Classifier = is_transient,
        replay_rate: float = 500.0,
    ) -> DestinationConfig:
        """Configure the delivery controls of destination ``name`` (the ``destination=`` of
        its handlers): a circuit breaker (``breaker=None``: none), its optional
        ``health_check`` (sync or async, run with ``health_check_timeout`` when the breaker is
        half-open; without one, one event is the probe), a rate limit in events per second
        across all processes and hosts (``burst``: tokens the bucket holds, default one
        second's worth), and whether dead events of the outage whose last error is transient
        (``transient(last_error)``) are redriven when the breaker closes, at ``replay_rate``
        events per second. A destination configured nowhere has no breaker and no limit."""
        if not isinstance(name, str) or not _DESTINATION_NAME.fullmatch(name):
            raise ConfigurationError(
                f"destination name must be 1-100 letters, digits or . _ : -, got {name!r}"
            )
        if name in self._destinations:
            raise ConfigurationError(f"destination {name!r} is already configured")
        config = DestinationConfig(
            name=name,
            breaker=breaker,
            health_check=health_check,
            health_check_timeout=health_check_timeout,
            rate_limit=rate_limit,
            burst=burst,
            replay_dead_on_recovery=replay_dead_on_recovery,
            transient=transient,
            replay_rate=replay_rate,
        )
        self._destinations[name] = config
        return config

    def destinations(self) -> list[DestinationConfig]:
        """The destinations with delivery controls, by name: those configured with
        destination(), and every routed destination, which gets a breaker by default. A routed
        destination's own ``health_check()`` is its breaker's probe unless destination() gave
        another."""
        configs = dict(self._destinations)
        for name, target in self._targets.items():
            check = getattr(target, "health_check", None)
            known = configs.get(name)
            if known is None:
                configs[name] = DestinationConfig(name=name, health_check=check)
            elif known.health_check is None and check is not None:
                configs[name] = replace(known, health_check=check)
        return [configs[name] for name in sorted(configs)]

    def handler(
        self,
        event_type: str,
        *,
        timeout: float | None = None,
        backoff: BackoffPolicy | None = None,
        destination: str | None = None,
        ordering: str | None = None,
        ttl: float | None = None,
    ) -> Callable[[H], H]:
        """Decorator: run the function for every event of ``event_type``. ``destination`` names
        the system it delivers to (default: the event type). ``ordering`` ("block", "skip" or
        "park") delivers the events of one aggregate one at a time in publish order; ``ttl``
        (seconds after publish) dead-letters events not delivered by then as expired."""

        def register(func: H) -> H:
            self.register(
                event_type,
                func,
                timeout=timeout,
                backoff=backoff,
                destination=destination,
                ordering=ordering,
                ttl=ttl,
            )
            return func

        return register

    def batch_handler(
        self,
        event_type: str,
        *,
        max_batch: int = 100,
        timeout: float | None = None,
        backoff: BackoffPolicy | None = None,
        destination: str | None = None,
        ordering: str | None = None,
        ttl: float | None = None,
    ) -> Callable[[B], B]:
        """Decorator: run the function once for a list of events of ``event_type`` (at most
        ``max_batch``, from one claim, most urgent first). Returning means every event of the
        list is done; raising BatchFailure fails the events it names; any other exception fails
        them all. ``timeout`` is for the whole call. ``ordering`` and ``ttl`` as for ``handler``
        (with ordering, one call holds at most one event of an aggregate)."""

        def register(func: B) -> B:
            self.register(
                event_type,
                func,
                timeout=timeout,
                backoff=backoff,
                max_batch=max_batch,
                destination=destination,
                ordering=ordering,
                ttl=ttl,
            )
            return func

        return register

    def register(
        self,
        event_type: str,
        func: Handler | BatchHandler,
        *,
        timeout: float | None = None,
        backoff: BackoffPolicy | None = None,
        max_batch: int | None = None,
        destination: str | None = None,
        ordering: str | None = None,
        ttl: float | None = None,
    ) -> None:
        if not isinstance(event_type, str) or not event_type:
            raise ConfigurationError("event_type must be a non-empty string")
        if event_type in self._handlers:
            raise ConfigurationError(f"a handler for {event_type!r} is already registered")
        if not callable(func):
            raise ConfigurationError(f"handler for {event_type!r} is not callable")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"handler timeout for {event_type!r} must be positive")
        if max_batch is not None and (type(max_batch) is not int or max_batch < 1):
            raise ConfigurationError(
                f"max_batch for {event_type!r} must be a whole number of at least 1, "
                f"got {max_batch!r}"
            )
        if destination is not None and not _DESTINATION_NAME.fullmatch(str(destination)):
            raise ConfigurationError(
                f"destination for {event_type!r} must be 1-100 letters, digits or . _ : -, "
                f"got {destination!r}"
            )
        if ordering is not None and ordering not in ORDERING_MODES:
            raise ConfigurationError(
                f"ordering for {event_type!r} must be one of {', '.join(ORDERING_MODES)} or None, "
                f"got {ordering!r}"
            )
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0
        ):
            raise ConfigurationError(f"ttl for {event_type!r} must be a positive number of seconds")
        spec: HandlerSpec
        if max_batch is None:
            spec = EventHandlerSpec(
                event_type=event_type,
                # register() takes either kind; max_batch is what says which one the caller gave.
                func=cast(Handler, func),
                is_async=inspect.iscoroutinefunction(func),
                timeout=timeout,
                backoff=backoff,
                destination=destination or event_type,
                ordering=ordering,
                ttl=None if ttl is None else float(ttl),
            )
        else:
            spec = BatchHandlerSpec(
                event_type=event_type,
                func=cast(BatchHandler, func),
                is_async=inspect.iscoroutinefunction(func),
                timeout=timeout,
                backoff=backoff,
                max_batch=max_batch,
                destination=destination or event_type,
                ordering=ordering,
                ttl=None if ttl is None else float(ttl),
            )
        self._handlers[event_type] = spec

    def get(self, event_type: str) -> HandlerSpec | None:
        """The handler of ``event_type``: its exact handler, else the first matching route's
        relay (as an async batch handler), else None."""
        spec = self._handlers.get(event_type)
        if spec is not None or not self._routes:
            return spec
        try:
            return self._routed[event_type]
        except KeyError:
            pass
        found: HandlerSpec | None = None
        for route in self._routes:
            if fnmatchcase(event_type, route.pattern):
                target = route.target
                found = BatchHandlerSpec(
                    event_type=event_type,
                    func=target.deliver,
                    is_async=True,
                    timeout=target.timeout,
                    backoff=route.backoff,
                    max_batch=target.max_batch,
                    destination=target.name,
                )
                break
        self._routed[event_type] = found
        return found

    @property
    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    def specs(self) -> list[HandlerSpec]:
        return list(self._handlers.values())
