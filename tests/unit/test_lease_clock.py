"""The lease clock: which events a worker process may still start (no database).

Times are given relative to time.monotonic(), as the worker gives them: the send time of a
claim or renewal, which is never after the database's now() that started the lease. The lease
is 60 s and the offsets are whole seconds, so a slow machine cannot change an answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from dispatchbox import Dispatcher, OutboxEvent
from dispatchbox.data.worker import Claimed
from dispatchbox.delivery.expiry import Expiry
from dispatchbox.dispatcher import BackoffPolicy
from dispatchbox.worker.handlers import HandlerRunner
from dispatchbox.worker.leases import LeaseClock
from dispatchbox.worker.outcomes import OutcomeBook


def test_a_claim_is_late_once_half_its_lease_is_gone() -> None:
    clock = LeaseClock(60.0, "w")
    now = time.monotonic()
    assert not clock.late(now)
    assert not clock.late(now - 20)
    assert clock.late(now - 40)
    assert clock.late(now - 600)  # a reply held back by a partition


def test_a_handler_needs_its_timeout_or_half_the_lease() -> None:
    clock = LeaseClock(60.0, "w")
    token = uuid.uuid4()
    now = time.monotonic()
    clock.claimed([token], now - 25)  # 35 s left
    assert clock.required(10) == 10 and clock.required(55) == 30
    assert clock.until_of(token) - now > clock.required(30)
    assert clock.until_of(token) - (now + 10) <= clock.required(40)  # 25 s left, 30 needed
    assert clock.until_of(uuid.uuid4()) == float("inf")  # not this clock's to stop


def test_a_renewal_extends_only_leases_that_still_held_when_it_came_back() -> None:
    clock = LeaseClock(60.0, "w")
    now = time.monotonic()
    holding, lapsed = uuid.uuid4(), uuid.uuid4()
    clock.claimed([holding], now - 50)  # surely held until now + 10
    clock.claimed([lapsed], now - 70)  # until 10 s ago: may have been taken over
    clock.renewed([holding, lapsed], now)
    assert clock.until[holding] >= now + 60
    assert clock.until[lapsed] < now  # a renewal cannot say it matched, so it is not believed
    clock.keep_only({holding})
    assert set(clock.until) == {holding}


def test_the_runner_gives_back_unstarted_what_its_lease_might_not_cover() -> None:
    dispatcher = Dispatcher()
    called: list[int] = []

    @dispatcher.handler("t", timeout=20)
    def handle(event: OutboxEvent) -> None:
        called.append(event.id)

    def claimed(event_id: int, token: uuid.UUID) -> Claimed:
        now = datetime.now(UTC)
        return Claimed(event_id, "a", "1", "t", "{}", "{}", 1, now, event_id, 5, 0, None, 0, token)

    async def scenario() -> OutcomeBook:
        book = OutcomeBook(
            worker="w", backoff=BackoffPolicy(), handled=None, batch_settled=lambda n: None
        )
        clock = LeaseClock(60.0, "w")
        fresh, stale = uuid.uuid4(), uuid.uuid4()
        now = time.monotonic()
        clock.claimed([fresh], now)  # 60 s left
        clock.claimed([stale], now - 45)  # 15 s left: less than the handler's 20 s timeout
        spec = dispatcher.get("t")
        assert spec is not None
        runner = HandlerRunner(
            concurrency=2, specs={"t": spec}, timeouts={"t": 20.0}, default_timeout=30.0,
            expiry=Expiry(dispatcher), book=book, leases=clock, ran_low=lambda: None,
        )  # fmt: skip
        runner.start(asyncio.get_running_loop())
        # The stale claim's event after a fresh one: the per-token shortcut must not pass it.
        runner.submit([claimed(1, fresh), claimed(3, fresh), claimed(2, stale)], [])
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(book.completed) + len(book.released) == 3:
                break
        assert runner.pool is not None
        runner.pool.stop()
        return book

    book = asyncio.run(scenario())
    assert sorted(called) == [1, 3]
    assert sorted(item.id for item in book.completed) == [1, 3]
    assert [item.id for item in book.released] == [2]
