"""When to alert: AlertConfig (thresholds, windows, cooldown) read from DISPATCHBOX_ALERT_*.

Channel settings (where messages go) belong to the channels themselves
(dispatchbox.observability); this module knows nothing about them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatchbox.errors import ConfigurationError

# Evaluation order. "dead_events" is a notification (no resolve); the others are incidents that
# open and resolve.
ALERTS = (
    "dead_events",
    "dead_count",
    "dead_age",
    "pending_age",
    "breaker_open",
    "cleanup_held",
    "new_fingerprint",
    "dead_budget",
)
INCIDENTS = ("dead_count", "dead_age", "pending_age", "breaker_open", "cleanup_held", "dead_budget")


@dataclass(frozen=True)
class AlertConfig:
    """When to alert. Every duration is in seconds; -1 disables an alert."""

    # Alerts are evaluated at most this often, by one process across all processes and hosts
    # (DISPATCHBOX_ALERT_INTERVAL_SECONDS).
    interval: float = 10.0
    # "Events went dead": at most one message per window; deaths in between are summed into the
    # next one. -1 disables (DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS).
    dead_window: float = 60.0
    # "Too many dead events": an incident while more than this many events are dead. -1
    # disables (DISPATCHBOX_ALERT_DEAD_THRESHOLD).
    dead_threshold: int = 1000
    # "Dead events left unattended": an incident while the oldest dead event died longer ago
    # than this (nobody retried, purged or archived it). -1 disables
    # (DISPATCHBOX_ALERT_DEAD_AGE_SECONDS).
    dead_age: float = 86400.0
    # "Dispatcher stuck": an incident while the oldest due pending event has waited longer than
    # this. -1 disables (DISPATCHBOX_ALERT_PENDING_AGE_SECONDS).
    pending_age: float = 600.0
    # "Destination down": an incident while a circuit breaker has been open (or half-open)
    # longer than this. -1 disables (DISPATCHBOX_ALERT_BREAKER_OPEN_SECONDS).
    breaker_open: float = 300.0
    # "Cleanup held back": an incident while a snapshot (a transaction left open) or a prepared
    # transaction has kept vacuum from cleaning the outbox for longer than this: dead rows pile
    # up and every claim slows down. -1 disables (DISPATCHBOX_ALERT_CLEANUP_HELD_SECONDS).
    cleanup_held: float = 1800.0
    # "A new error group": an error fingerprint no dead event ever had appeared within this
    # many seconds; each new group is announced once (maintenance/fingerprint_alert.py). Off
    # (-1) unless set, e.g. 900 (DISPATCHBOX_ALERT_NEW_FINGERPRINT_SECONDS).
    new_fingerprint: float = -1
    # "Dead letters burn the error budget": an incident while the share of events finished in
    # the last burn_window seconds that missed the objective (went dead, or were delivered
    # more than slo_seconds after they were created), over the budget 1 - slo, is above this
    # burn rate; 14.4 is the usual fast-burn page (a 30-day budget gone in about two days).
    # Off (-1) unless set (DISPATCHBOX_ALERT_DEAD_BURN_RATE).
    dead_burn_rate: float = -1
    # The delivery objective the budget comes from: this share of events delivered within
    # slo_seconds (DISPATCHBOX_ALERT_SLO).
    slo: float = 0.999
    # "Delivered within" of the objective, seconds from created_at to done_at; a later
    # delivery burns the budget as a dead letter does (DISPATCHBOX_ALERT_SLO_SECONDS).
    slo_seconds: float = 300.0
    # The window of the burn rate, seconds (DISPATCHBOX_ALERT_BURN_WINDOW_SECONDS).
    burn_window: float = 300.0
    # After a threshold incident resolves, a new one is not announced for this long, so a value
    # hovering around its threshold does not page every minute
    # (DISPATCHBOX_ALERT_COOLDOWN_SECONDS).
    cooldown: float = 300.0
    # Error groups listed in a deaths message (DISPATCHBOX_ALERT_TOP_ERRORS).
    top_errors: int = 5
    # Event ids listed per error group, ready to paste into retry-batch
    # (DISPATCHBOX_ALERT_IDS_PER_ERROR).
    ids_per_error: int = 10
    # First word of every message: name the environment, e.g. "prod-eu"
    # (DISPATCHBOX_ALERT_LABEL).
    label: str = "dispatchbox"
    # Deaths younger than this are left for the next message, so that one committed a moment
    # after the query started is not skipped by the cursor.
    settle: float = 1.0

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_INTERVAL_SECONDS must be positive")
        for name, value in (
            ("DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS", self.dead_window),
            ("DISPATCHBOX_ALERT_DEAD_THRESHOLD", self.dead_threshold),
            ("DISPATCHBOX_ALERT_DEAD_AGE_SECONDS", self.dead_age),
            ("DISPATCHBOX_ALERT_PENDING_AGE_SECONDS", self.pending_age),
            ("DISPATCHBOX_ALERT_BREAKER_OPEN_SECONDS", self.breaker_open),
            ("DISPATCHBOX_ALERT_CLEANUP_HELD_SECONDS", self.cleanup_held),
            ("DISPATCHBOX_ALERT_NEW_FINGERPRINT_SECONDS", self.new_fingerprint),
            ("DISPATCHBOX_ALERT_DEAD_BURN_RATE", self.dead_burn_rate),
        ):
            if value != -1 and value < 0:
                raise ConfigurationError(f"{name} must be -1 (off) or at least 0, got {value}")
        if not 0 < self.slo < 1:
            raise ConfigurationError(
                f"DISPATCHBOX_ALERT_SLO must be between 0 and 1, got {self.slo}"
            )
        if not self.burn_window > 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_BURN_WINDOW_SECONDS must be positive")
        if not self.slo_seconds > 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_SLO_SECONDS must be positive")
        if self.cooldown < 0 or self.settle < 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_COOLDOWN_SECONDS must not be negative")
        if self.top_errors < 1 or self.ids_per_error < 1:
            raise ConfigurationError("top errors and ids per error must be at least 1")

    def enabled(self) -> list[str]:
        """The alerts that are on, in evaluation order."""
        on = {
            "dead_events": self.dead_window != -1,
            "dead_count": self.dead_threshold != -1,
            "dead_age": self.dead_age != -1,
            "pending_age": self.pending_age != -1,
            "breaker_open": self.breaker_open != -1,
            "cleanup_held": self.cleanup_held != -1,
            "new_fingerprint": self.new_fingerprint != -1,
            "dead_budget": self.dead_burn_rate != -1,
        }
        return [a for a in ALERTS if on[a]]

    def threshold(self, alert: str) -> float:
        """An incident alert's threshold (a count, or seconds)."""
        return float(
            {
                "dead_count": self.dead_threshold,
                "dead_age": self.dead_age,
                "pending_age": self.pending_age,
                "breaker_open": self.breaker_open,
                "cleanup_held": self.cleanup_held,
                "dead_budget": self.dead_burn_rate,
            }[alert]
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertConfig:
        source = os.environ if env is None else env

        def number(name: str, default: float, kind: Callable[[str], float] = float) -> Any:
            raw = source.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return kind(raw.strip())
            except ValueError:
                raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None

        base = cls()
        return cls(
            interval=number("DISPATCHBOX_ALERT_INTERVAL_SECONDS", base.interval),
            dead_window=number("DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS", base.dead_window),
            dead_threshold=number("DISPATCHBOX_ALERT_DEAD_THRESHOLD", base.dead_threshold, int),
            dead_age=number("DISPATCHBOX_ALERT_DEAD_AGE_SECONDS", base.dead_age),
            pending_age=number("DISPATCHBOX_ALERT_PENDING_AGE_SECONDS", base.pending_age),
            breaker_open=number("DISPATCHBOX_ALERT_BREAKER_OPEN_SECONDS", base.breaker_open),
            cleanup_held=number("DISPATCHBOX_ALERT_CLEANUP_HELD_SECONDS", base.cleanup_held),
            cooldown=number("DISPATCHBOX_ALERT_COOLDOWN_SECONDS", base.cooldown),
            top_errors=number("DISPATCHBOX_ALERT_TOP_ERRORS", base.top_errors, int),
            ids_per_error=number("DISPATCHBOX_ALERT_IDS_PER_ERROR", base.ids_per_error, int),
            label=(source.get("DISPATCHBOX_ALERT_LABEL") or base.label).strip() or base.label,
            new_fingerprint=number(
                "DISPATCHBOX_ALERT_NEW_FINGERPRINT_SECONDS", base.new_fingerprint
            ),
            dead_burn_rate=number("DISPATCHBOX_ALERT_DEAD_BURN_RATE", base.dead_burn_rate),
            slo=number("DISPATCHBOX_ALERT_SLO", base.slo),
            burn_window=number("DISPATCHBOX_ALERT_BURN_WINDOW_SECONDS", base.burn_window),
            slo_seconds=number("DISPATCHBOX_ALERT_SLO_SECONDS", base.slo_seconds),
        )


def alerts_enabled(env: Mapping[str, str] | None = None) -> bool:
    """DISPATCHBOX_ALERT_ENABLED=0 keeps this process from evaluating (others still do)."""
    source = os.environ if env is None else env
    value = (source.get("DISPATCHBOX_ALERT_ENABLED") or "1").strip().lower()
    return value not in ("0", "false", "no", "off")
