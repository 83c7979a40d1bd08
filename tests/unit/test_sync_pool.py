"""SyncPool: timeouts abandon a stuck handler without blocking shutdown on it (no database)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime

from dispatchbox.worker.store import Claimed
from dispatchbox.worker.threads import SyncPool


def _item(event_id: int) -> Claimed:
    now = datetime.now(UTC)
    return Claimed(event_id, "a", "1", "t", "{}", "{}", 1, 5, now, uuid.uuid4(), now)


def test_an_abandoned_handler_no_longer_counts_as_busy() -> None:
    release = threading.Event()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool: SyncPool[int] = SyncPool(
            2,
            run_item=lambda item: release.wait(10) and item.id,
            timeout_of=lambda item: 0.05,
            on_results=lambda: None,
            loop=loop,
        )
        pool.submit([_item(1)])
        deadline = time.monotonic() + 5
        while pool.busy() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.busy() == 1
        expired = pool.expire(time.monotonic() + 1)
        assert [i.id for i in expired] == [1]
        assert pool.busy() == 0, "its outcome is settled; shutdown must not wait for it"
        pool.submit([_item(2)])  # the replacement thread keeps the pool at its size
        deadline = time.monotonic() + 5
        while pool.busy() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.busy() == 1
        release.set()
        pool.stop()

    asyncio.run(scenario())
