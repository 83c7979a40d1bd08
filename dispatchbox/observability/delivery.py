"""What every alert channel shares: one log line per outage, with its secrets blanked.

A channel that keeps failing would otherwise log at every evaluation round; this logs the first
failure at WARNING, the next ones at DEBUG, and one INFO line when a message gets through again.
Every reason passes through ``redact`` first, so a password, routing key, webhook secret or token
that an exception happens to quote never reaches a log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from dispatchbox.errors import ConfigurationError


def redact(text: str, secrets: Iterable[str]) -> str:
    """text with every secret replaced by ***, on one line, at most 300 characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())[:300]


class _HideSecrets(logging.Filter):
    """Drops a library's log records that quote a secret (httpx logs every request's URL)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(secret in text for secret in self.secrets)


def hide_secrets_from(logger_name: str, secrets: Iterable[str]) -> None:
    """Keep records that quote any of these secrets out of that library logger's output."""
    logging.getLogger(logger_name).addFilter(_HideSecrets(list(secrets)))


class DeliveryLog:
    """Reports a channel's successes and failures; thread-safe."""

    def __init__(self, logger: logging.Logger, channel: str, destination: str) -> None:
        self.logger = logger
        self.channel = channel
        self.destination = destination  # where messages go, without secrets
        self._failing = False
        self._lock = threading.Lock()

    def report(self, ok: bool, reason: str, secrets: Iterable[str]) -> None:
        with self._lock:
            if ok:
                if self._failing:
                    self.logger.info(
                        "%s_delivery_recovered destination=%s", self.channel, self.destination
                    )
                self._failing = False
                return
            if not self._failing:
                self.logger.warning(
                    "%s_delivery_failed destination=%s error=%s (further failures are logged "
                    "at DEBUG until a message gets through)",
                    self.channel,
                    self.destination,
                    redact(reason, secrets),
                )
            else:
                self.logger.debug(
                    "%s_delivery_failed_again error=%s", self.channel, redact(reason, secrets)
                )
            self._failing = True


def positive_seconds(name: str, raw: str | None, default: float) -> float:
    """A timeout setting: a positive number of seconds, or the default when unset."""
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds")
    return value
