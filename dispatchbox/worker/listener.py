"""Listening: LISTEN for the insert trigger's notification and wake the claimer.

On a connection of its own, retried through outages; off with --no-listen (behind PgBouncer in
transaction mode), when the claimer wakes at its poll interval only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatchbox.data import worker as worker_data
from dispatchbox.worker.outage import CONNECTION_ERRORS

if TYPE_CHECKING:
    from dispatchbox.worker.process import WorkerProcess


async def listen_loop(proc: WorkerProcess) -> None:
    """Wake the claimer on each notification (and once after every (re)connect)."""
    holder = proc.listen_conn
    while True:
        try:
            conn = await holder.get()
            await worker_data.listen(conn)
            # A notification may have been missed while (re)connecting: look once.
            proc.wakeup.set()
            async for _ in conn.notifies():
                proc.wakeup.set()
                proc.want_more.set()
        except CONNECTION_ERRORS as exc:
            proc.outage.failed(exc)
            await holder.close()
            await proc.outage.backoff()
