"""Database outages: log once when one starts and once when it ends, back off in between."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from dispatchbox.db import redact
from dispatchbox.errors import DatabaseUnreachable

logger = logging.getLogger("dispatchbox.worker")

# Errors that mean "the connection or the server is gone", as opposed to a bug in a statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseUnreachable,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)


class OutageTracker:
    """Shared by every task of one process, so one outage is one log line, not one per task."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.down_since: float | None = None
        self._delay = 0.2

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.error(
                "database_unreachable worker=%s error=%s",
                self.worker,
                redact(" ".join(str(exc).split()))[:300],
            )

    def ok(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "database_reachable worker=%s outage_seconds=%.1f",
                self.worker,
                time.monotonic() - self.down_since,
            )
            self.down_since = None
            self._delay = 0.2

    async def backoff(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 5.0)
