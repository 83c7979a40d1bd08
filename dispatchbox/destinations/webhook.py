"""HTTP webhook destination (httpx): one signed POST per event, a batch's POSTs concurrently.

The request follows Standard Webhooks (standardwebhooks.com): headers ``webhook-id`` (the
event id, the receiver's idempotency key), ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the secret's
bytes (a ``whsec_`` prefix followed by base64, as Standard Webhooks libraries generate them).
The body is the event envelope (``dispatchbox.destinations.base.envelope``).

Answers: 2xx delivered; 408, 429 and 5xx transient, with ``Retry-After`` (seconds or an HTTP
date) as the time of the next attempt; any other status (4xx, and 3xx: redirects are not
followed) permanent; connection errors and timeouts transient.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from dispatchbox.destinations.base import (
    Destination,
    SendError,
    envelope,
    safe_url,
    url_secrets,
)
from dispatchbox.errors import ConfigurationError
from dispatchbox.events import OutboxEvent
from dispatchbox.outbound import hide_in_httpx_logs

TRANSIENT_STATUSES = frozenset({408, 429})


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` + base64 (the prefix optional)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        raise ConfigurationError(
            "webhook secret must be 'whsec_' followed by base64 (Standard Webhooks)"
        ) from None
    if len(key) < 16:
        raise ConfigurationError("webhook secret must decode to at least 16 bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header value for one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class Webhook(Destination):
    """POST each event to ``url``, signed with ``secret``.

    ``timeout`` bounds one request; ``concurrency`` is how many requests of a batch run at once;
    ``max_retry_after`` caps a server's Retry-After (seconds); ``headers`` are added to every
    request (never logged)."""

    kind = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        name: str | None = None,
        timeout: float = 10.0,
        concurrency: int = 10,
        max_batch: int = 50,
        max_retry_after: float = 3600.0,
        headers: Mapping[str, str] | None = None,
        health_url: str | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise ConfigurationError("webhook url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError("webhook url must be an absolute http(s) URL")
        if concurrency < 1:
            raise ConfigurationError("webhook concurrency must be at least 1")
        extra = dict(headers or {})
        super().__init__(
            name=name,
            max_batch=max_batch,
            # The worker's limit for a whole batch: every request may take `timeout`, and a
            # batch runs in ceil(max_batch / concurrency) waves.
            timeout=timeout * (-(-max_batch // concurrency)) + 5.0,
            connect_timeout=timeout,
            secrets=[
                *url_secrets(url),
                *([secret] if secret else []),
                *url_secrets(health_url or ""),
                *extra.values(),
            ],
        )
        self.url = url
        self.health_url = health_url or url
        self.key = secret_key(secret) if secret else None
        self.request_timeout = timeout
        self.concurrency = concurrency
        self.max_retry_after = max_retry_after
        self.headers = extra
        self.target = safe_url(url)
        # httpx logs each request's URL at INFO: the path and query may be a token.
        hide_in_httpx_logs(url=url, secrets=self._secrets)

    def request(
        self, event: OutboxEvent, *, now: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST for one event."""
        body = envelope(event)
        msg_id = str(event.id)
        timestamp = int(time.time()) if now is None else now
        headers = {
            **self.headers,
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, msg_id, timestamp, body)
        return body, headers

    async def send_batch(self, events: Sequence[OutboxEvent]) -> dict[int, BaseException]:
        client: httpx.AsyncClient = await self._connection()
        gate = asyncio.Semaphore(self.concurrency)

        async def post(event: OutboxEvent) -> BaseException | None:
            async with gate:
                body, headers = self.request(event)
                try:
                    response = await client.post(self.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    return exc
                return self._verdict(response)

        results = await asyncio.gather(*(post(e) for e in events))
        return {e.id: r for e, r in zip(events, results, strict=True) if r is not None}

    def _verdict(self, response: httpx.Response) -> SendError | None:
        status = response.status_code
        if 200 <= status < 300:
            return None
        transient = status in TRANSIENT_STATUSES or status >= 500
        retry_after = None
        if transient:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None:
                retry_after = min(retry_after, self.max_retry_after)
        reason = response.reason_phrase or ""
        return SendError(
            f"HTTP {status} {reason} from {self.target}".replace("  ", " "),
            permanent=not transient,
            retry_after=retry_after,
        )

    async def _connect(self) -> Any:
        return httpx.AsyncClient(
            timeout=self.request_timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    async def _disconnect(self, conn: Any) -> None:
        await conn.aclose()

    async def _probe(self) -> None:
        # Any HTTP answer means the receiver is up: a HEAD needs no route of its own there.
        client: httpx.AsyncClient = await self._connection()
        response = await client.head(self.health_url)
        if response.status_code >= 500:
            raise SendError(f"HTTP {response.status_code} from {safe_url(self.health_url)}")
