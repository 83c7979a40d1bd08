"""LeaseClock: which leases a worker process may still start events under (no database).

Times are given relative to time.monotonic(), as the worker gives them: the send time of a
claim or renewal, which is never after the database's now() that started the lease.
"""

from __future__ import annotations

import time
import uuid

from dispatchbox.worker.leases import LeaseClock


def test_a_claim_is_late_once_less_than_a_third_of_its_lease_is_left() -> None:
    clock = LeaseClock(3.0)
    now = time.monotonic()
    assert not clock.late(now)
    assert not clock.late(now - 1.9)  # 1.1 s of 3 left
    assert clock.late(now - 2.1)  # 0.9 s left: less than the 1 s margin
    assert clock.late(now - 10)  # a reply held back by a partition


def test_a_renewal_extends_only_leases_that_still_held_when_it_came_back() -> None:
    clock = LeaseClock(3.0)
    now = time.monotonic()
    holding, lapsed = uuid.uuid4(), uuid.uuid4()
    clock.claimed([holding], now - 2.5)  # surely held until now + 0.5
    clock.claimed([lapsed], now - 3.5)  # surely held until 0.5 s ago: may be taken over
    clock.renewed([holding, lapsed], now)
    assert clock.until[holding] >= now + 3.0
    assert clock.until[lapsed] < now  # a renewal cannot say it matched, so it is not believed


def test_lapsing_tokens_are_returned_once_and_forgotten() -> None:
    clock = LeaseClock(3.0)
    now = time.monotonic()
    fresh, short = uuid.uuid4(), uuid.uuid4()
    clock.claimed([fresh], now)
    clock.claimed([short], now - 2.2)  # 0.8 s left
    assert clock.lapsing() == {short}
    assert clock.lapsing() == set()
    clock.renewed([short], time.monotonic())  # forgotten: a late renewal does not revive it
    assert short not in clock.until
    clock.keep_only(set())
    assert clock.until == {}
