"""The worker's observer: counts outcomes into the metrics and wakes the alert evaluator.

``dispatchbox worker`` (dispatchbox/cli/worker.py) hands ``make_hooks`` to the supervisor, and
each worker process calls it once and passes the hooks to its loop. Metrics are recorded when
the supervisor set up a multiprocess directory (``--metrics-port``, or
``PROMETHEUS_MULTIPROC_DIR``); the alert evaluators run on their own threads, one per configured
channel. Hooks run on the worker's event loop: each call only bumps in-memory counters
(memory-mapped files) or sets an event, and never raises.
"""

from __future__ import annotations

import logging

from dispatchbox.data.worker import Transition
from dispatchbox.maintenance.alerts import AlertGroup
from dispatchbox.observability.alerting import start_evaluators
from dispatchbox.observability.metrics import WorkerMetrics, multiprocess_dir
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.hooks import WorkerHooks

logger = logging.getLogger("dispatchbox.observability")


class ObservabilityHooks(WorkerHooks):
    def __init__(
        self, metrics: WorkerMetrics | None = None, alerts: AlertGroup | None = None
    ) -> None:
        self.metrics = metrics
        self.alerts = alerts
        self._broken = False

    def _failed(self, what: str) -> None:
        # A bug in observability must never stop dispatching; say so once per process.
        if not self._broken:
            logger.exception("observability_hook_failed hook=%s (reported once)", what)
        self._broken = True

    def handled(self, event_type: str, outcome: str, seconds: float) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.handled(event_type, outcome, seconds)
        except Exception:
            self._failed("handled")

    def dead(self, transition: Transition, error_type: str) -> None:
        try:
            if self.metrics is not None:
                self.metrics.went_dead(
                    transition.event_type,
                    transition.aggregate_type,
                    transition.attempts,
                    transition.destination or "",
                )
            if self.alerts is not None:
                self.alerts.poke()
        except Exception:
            self._failed("dead")

    def lease_expired(self, transition: Transition) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.lease_was_expired(transition.event_type)
        except Exception:
            self._failed("lease_expired")


def make_hooks(config: WorkerConfig, slot: int) -> WorkerHooks:
    """Hooks for one worker process (called in that process, before its loop starts)."""
    metrics = None
    if multiprocess_dir() is not None:
        metrics = WorkerMetrics()
        metrics.started()
    return ObservabilityHooks(metrics, start_evaluators(config.dsn))
