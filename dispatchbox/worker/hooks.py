"""Hooks: what the worker tells observers (metrics, alerts) about outcomes. No-ops by default."""

from __future__ import annotations

from dispatchbox.data.worker import Transition


class WorkerHooks:
    """Subclass and override; every method must be cheap and must not raise."""

    def handled(self, event_type: str, outcome: str, seconds: float) -> None:
        """A handler finished: outcome is 'done', 'failed', 'timeout' or 'permanent'."""

    def dead(self, transition: Transition, error_type: str) -> None:
        """An event went dead (a handler failure or an expired lease)."""

    def lease_expired(self, transition: Transition) -> None:
        """The reaper took an event back from a worker that stopped renewing its lease."""
