"""Keeping leases: the heartbeat that renews the lease of every event this process holds.

Every third of the lease, one statement (through the data layer, on the process's upkeep
connection, retried through outages) renews them all. Expired leases of any worker are the
reaper's (dispatchbox/maintenance/reaper.py), which the process runs beside the heartbeat.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import worker as worker_data

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess


async def heartbeat_loop(proc: WorkerProcess) -> None:
    """Renew the leases this process holds, every third of the lease."""
    lease_seconds = proc.config.lease_seconds
    interval = lease_seconds / 3

    async def renew(items: list[tuple[int, uuid.UUID]], conn: psycopg.AsyncConnection[Any]) -> int:
        return await worker_data.heartbeat(conn, items, lease_seconds=lease_seconds)

    while True:
        await asyncio.sleep(interval)
        items = list(proc.leased.items())
        if items:
            await proc.with_db(proc.upkeep_conn, partial(renew, items))
