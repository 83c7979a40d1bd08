"""The supervisor's side of metrics: the multiprocess directory and the /metrics endpoint.

``dispatchbox worker --metrics-port P`` creates a ``MetricsExporter`` before any worker process
starts: it prepares the directory (see metrics.MetricsDirectory), then serves the sum of every
worker process's counters plus the database gauges on ``http://HOST:P/metrics``, from a thread of
the supervisor. Without a port, the directory is still prepared when ``PROMETHEUS_MULTIPROC_DIR``
is set, so that ``dispatchbox serve`` on the same host can serve the workers' counters.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import start_http_server

from dispatchbox.errors import DispatchboxError
from dispatchbox.observability.database_metrics import DatabaseCollector
from dispatchbox.observability.metrics import (
    MetricsDirectory,
    build_registry,
    multiprocess_dir,
)

logger = logging.getLogger("dispatchbox.metrics")


class MetricsExporter:
    def __init__(self, dsn: str, *, port: int | None, host: str = "0.0.0.0") -> None:  # noqa: S104
        self.dsn = dsn
        self.port = port
        self.host = host
        self.directory: MetricsDirectory | None = None
        self.database: DatabaseCollector | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.directory is not None

    def prepare(self) -> None:
        """The directory, before any worker process starts (they inherit its variable)."""
        if self.directory is None and (self.port is not None or multiprocess_dir() is not None):
            self.directory = MetricsDirectory()

    def start(self) -> None:
        """Prepare the directory and, with a port, listen; DispatchboxError if it cannot bind."""
        self.prepare()
        if self.port is None or self.directory is None:
            return
        self.database = DatabaseCollector(self.dsn)
        registry = build_registry(
            None, multiprocess_path=self.directory.path, database=self.database
        )
        try:
            self._server, self._thread = start_http_server(self.port, self.host, registry)
        except OSError as exc:
            self.close()
            # An operational failure (exit code 1): the port is taken, or the address is not ours.
            raise DispatchboxError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        logger.info("metrics_serving address=http://%s:%d/metrics", self.host, self.port)

    def process_exited(self, pid: int) -> None:
        if self.directory is not None:
            self.directory.process_exited(pid)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.database is not None:
            self.database.close()
        if self.directory is not None:
            self.directory.close()
