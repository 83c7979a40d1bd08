"""Dispatcher registration, backoff and worker configuration checks (no database)."""

from __future__ import annotations

import pytest

from dispatchbox import BackoffPolicy, BatchFailure, Dispatcher, OutboxEvent, PermanentError
from dispatchbox.errors import ConfigurationError
from dispatchbox.worker.config import WorkerConfig


def test_backoff_grows_exponentially_with_bounded_jitter_and_cap() -> None:
    policy = BackoffPolicy(base=1, factor=2, cap=60, jitter=0.5)
    for attempt, raw in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (1000, 60)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(raw * 0.5 <= d <= raw for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > 0, "jitter spreads retries"
    assert BackoffPolicy(base=3, jitter=0).delay(1) == 3


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        BackoffPolicy(factor=0.5)


def test_dispatcher_registers_sync_and_async_handlers() -> None:
    d = Dispatcher()

    @d.handler("a")
    def a(event: OutboxEvent) -> None: ...

    @d.handler("b", timeout=5, backoff=BackoffPolicy(base=10))
    async def b(event: OutboxEvent) -> None: ...

    spec_a, spec_b = d.get("a"), d.get("b")
    assert spec_a is not None and not spec_a.is_async
    assert spec_b is not None and spec_b.is_async and spec_b.timeout == 5
    assert d.event_types == ["a", "b"]
    assert d.get("c") is None
    with pytest.raises(ConfigurationError, match="already registered"):
        d.register("a", a)


def test_handler_timeout_must_be_shorter_than_the_lease() -> None:
    WorkerConfig(dsn="", app="m:d", lease_seconds=60, handler_timeout=30).validate()
    with pytest.raises(ConfigurationError, match="shorter than"):
        WorkerConfig(dsn="", app="m:d", lease_seconds=30, handler_timeout=30).validate()
    d = Dispatcher()
    d.register("slow", lambda e: None, timeout=90)
    with pytest.raises(ConfigurationError, match="'slow' has timeout 90s"):
        WorkerConfig(dsn="", app="m:d", lease_seconds=60).validate(d)
    with pytest.raises(ConfigurationError, match="--concurrency must be positive"):
        WorkerConfig(dsn="", app="m:d", concurrency=0).validate()


def test_batch_handlers_register_with_their_size_and_refuse_bad_ones() -> None:
    d = Dispatcher()

    @d.batch_handler("a", max_batch=500)
    def a(events: list[OutboxEvent]) -> None: ...

    @d.batch_handler("b")
    async def b(events: list[OutboxEvent]) -> None: ...

    spec_a, spec_b = d.get("a"), d.get("b")
    assert spec_a is not None and spec_a.max_batch == 500 and not spec_a.is_async
    assert spec_b is not None and spec_b.max_batch == 100 and spec_b.is_async
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_batch"):
            d.batch_handler(f"c{bad}", max_batch=bad)(a)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="already registered"):
        d.handler("a")(lambda event: None)


def test_batch_failure_takes_event_ids_and_exceptions_only() -> None:
    failure = BatchFailure({7: RuntimeError("x"), 9: PermanentError("y")})
    assert set(failure.failures) == {7, 9} and "2 event(s)" in str(failure)
    for bad in ({"7": RuntimeError("x")}, {7: "not an exception"}):
        with pytest.raises(TypeError, match="event id"):
            BatchFailure(bad)  # type: ignore[arg-type]
