"""The generic webhook alert channel: a JSON POST signed with HMAC-SHA256 (httpx).

``DISPATCHBOX_ALERT_WEBHOOK_URL`` and ``DISPATCHBOX_ALERT_WEBHOOK_SECRET`` turn it on (an unsigned
webhook is refused: anyone who learns the URL could forge alerts); ``DISPATCHBOX_ALERT_WEBHOOK_
TIMEOUT`` (5 s) is optional. Each request carries

    X-Dispatchbox-Timestamp: <unix seconds>
    X-Dispatchbox-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>

so the receiver checks the signature over the exact bytes it received, and rejects old
timestamps (replays). The body is ``Notice.to_json()``. The URL may hold a token and the secret
is one: neither appears in a log (the host alone names the destination).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alert_text import Notice
from dispatchbox.outbound import (
    DeliveryLog,
    hide_in_httpx_logs,
    http_url,
    positive_seconds,
    url_secrets,
)

logger = logging.getLogger("dispatchbox.webhook")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Dispatchbox-Signature value for a body sent at timestamp."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class WebhookConfig:
    # Where to POST (DISPATCHBOX_ALERT_WEBHOOK_URL). Treated as a secret.
    url: str = field(repr=False)
    # HMAC-SHA256 key (DISPATCHBOX_ALERT_WEBHOOK_SECRET). Secret.
    secret: str = field(repr=False)
    # Seconds one request may take (DISPATCHBOX_ALERT_WEBHOOK_TIMEOUT).
    timeout: float = 5.0

    def __post_init__(self) -> None:
        http_url("DISPATCHBOX_ALERT_WEBHOOK_URL", self.url)
        if len(self.secret) < 16:
            raise ConfigurationError(
                "DISPATCHBOX_ALERT_WEBHOOK_SECRET must be at least 16 characters"
            )

    @property
    def destination(self) -> str:
        return f"webhook at {httpx.URL(self.url).host}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig | None:
        source = os.environ if env is None else env
        url = (source.get("DISPATCHBOX_ALERT_WEBHOOK_URL") or "").strip()
        secret = source.get("DISPATCHBOX_ALERT_WEBHOOK_SECRET") or ""
        if not url and not secret:
            return None
        if not url or not secret:
            raise ConfigurationError(
                "a webhook needs both DISPATCHBOX_ALERT_WEBHOOK_URL and "
                "DISPATCHBOX_ALERT_WEBHOOK_SECRET"
            )
        return cls(
            url=url,
            secret=secret,
            timeout=positive_seconds(
                "DISPATCHBOX_ALERT_WEBHOOK_TIMEOUT",
                source.get("DISPATCHBOX_ALERT_WEBHOOK_TIMEOUT"),
                5.0,
            ),
        )


class WebhookSender:
    """The webhook channel; thread-safe; never raises. Any 2xx answer is a delivery."""

    name = "webhook"
    incidents_only = False

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log = DeliveryLog(logger, "webhook", config.destination)
        self._client = httpx.Client(timeout=config.timeout, follow_redirects=False)
        # The URL may hold a token, in any of the forms an error or httpx's log quotes it.
        self._secrets = [*url_secrets(config.url), config.secret]
        hide_in_httpx_logs(url=config.url, secrets=[config.secret])

    def send(self, notice: Notice) -> bool:
        body = json.dumps(notice.to_json(), separators=(",", ":")).encode()
        with self._lock:
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "dispatchbox-alerts",
                "X-Dispatchbox-Timestamp": stamp,
                "X-Dispatchbox-Signature": sign(self.config.secret, stamp, body),
            }
            try:
                response = self._client.post(self.config.url, content=body, headers=headers)
                ok = 200 <= response.status_code < 300
                reason = f"HTTP {response.status_code}"
            except Exception as exc:  # timeout, refused, TLS: one failure
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            self._log.report(ok, reason, self._secrets)
            return ok
