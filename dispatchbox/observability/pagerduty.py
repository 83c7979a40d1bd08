"""The PagerDuty alert channel: Events API v2, trigger and resolve (httpx).

``DISPATCHBOX_PAGERDUTY_ROUTING_KEY`` (an integration's key, a secret) turns it on;
``DISPATCHBOX_PAGERDUTY_URL`` (default the public Events API) and
``DISPATCHBOX_PAGERDUTY_TIMEOUT`` (5 s) are optional. An incident's trigger and resolve share one
``dedup_key`` (the notice's incident key), so PagerDuty closes the incident it opened. Pagers get
incidents only (too many dead, dead left unattended, dispatcher stuck), not each batch of deaths,
which would open incidents nothing ever resolves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alert_text import Notice
from dispatchbox.outbound import (
    DeliveryLog,
    hide_in_httpx_logs,
    http_url,
    positive_seconds,
)

logger = logging.getLogger("dispatchbox.pagerduty")

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
# PagerDuty's severities, by alert: a stuck dispatcher stops all delivery.
SEVERITY = {
    "pending_age": "critical",
    "dead_count": "error",
    "dead_age": "warning",
    "cleanup_held": "warning",
}


@dataclass(frozen=True)
class PagerDutyConfig:
    # Events API v2 integration key (DISPATCHBOX_PAGERDUTY_ROUTING_KEY). Secret.
    routing_key: str = field(repr=False)
    # Where events are posted (DISPATCHBOX_PAGERDUTY_URL).
    url: str = DEFAULT_URL
    # Seconds one request may take, connection included (DISPATCHBOX_PAGERDUTY_TIMEOUT).
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if len(self.routing_key.strip()) < 8:
            raise ConfigurationError("DISPATCHBOX_PAGERDUTY_ROUTING_KEY looks wrong: too short")
        http_url("DISPATCHBOX_PAGERDUTY_URL", self.url)

    @property
    def destination(self) -> str:
        return httpx.URL(self.url).host or "pagerduty"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PagerDutyConfig | None:
        source = os.environ if env is None else env
        key = (source.get("DISPATCHBOX_PAGERDUTY_ROUTING_KEY") or "").strip()
        if not key:
            return None
        return cls(
            routing_key=key,
            url=(source.get("DISPATCHBOX_PAGERDUTY_URL") or DEFAULT_URL).strip(),
            timeout=positive_seconds(
                "DISPATCHBOX_PAGERDUTY_TIMEOUT", source.get("DISPATCHBOX_PAGERDUTY_TIMEOUT"), 5.0
            ),
        )


class PagerDutySender:
    """The PagerDuty channel; thread-safe; never raises."""

    name = "pagerduty"
    incidents_only = True

    def __init__(self, config: PagerDutyConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log = DeliveryLog(logger, "pagerduty", config.destination)
        # No retries and no redirects: one bounded attempt per round; the next round retries.
        self._client = httpx.Client(timeout=config.timeout, follow_redirects=False)
        # The routing key travels in the body, never in httpx's URL line; this is a backstop.
        hide_in_httpx_logs(secrets=[config.routing_key])

    def event(self, notice: Notice) -> dict[str, Any]:
        """The Events API v2 body for a notice."""
        body: dict[str, Any] = {
            "routing_key": self.config.routing_key,
            "event_action": "resolve" if notice.action == "resolve" else "trigger",
            "dedup_key": notice.incident_key,
        }
        if notice.action != "resolve":
            body["payload"] = {
                "summary": notice.summary[:1024],
                "source": notice.where,
                "severity": SEVERITY.get(notice.alert, "error"),
                "component": "dispatchbox",
                "group": notice.label,
                "class": notice.alert,
                "custom_details": {
                    "text": notice.plain,
                    "value": notice.value,
                    "threshold": notice.threshold,
                },
            }
        return body

    def send(self, notice: Notice) -> bool:
        with self._lock:
            try:
                response = self._client.post(self.config.url, json=self.event(notice))
                ok = response.status_code == 202
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
            except Exception as exc:  # timeout, refused, TLS: one failure
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            self._log.report(ok, reason, [self.config.routing_key])
            return ok
