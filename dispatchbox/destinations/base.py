"""The one interface every destination implements, and what they share.

A destination is one object per target (a webhook URL, an exchange, a stream). The worker calls
``deliver(events)`` with a batch of events routed to it (the route makes it an async batch
handler). ``deliver`` calls the destination's ``send_batch``, which returns the failed events
with their errors; each error is classified transient (retried after the backoff, or after the
destination's ``retry_after``) or permanent (dead at once), its text redacted of every secret the
destination knows, and handed to the worker as a ``BatchFailure``.

Connections are opened lazily, on the event loop that uses them, and reopened after an error or
when called from another loop (a worker process has one loop; ``dispatchbox.testing`` makes a
fresh one per call), so a destination object can be built at import time, before the worker forks.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import orjson

from dispatchbox.errors import BatchFailure, ConfigurationError, PermanentError, RetryLater
from dispatchbox.events import OutboxEvent

# user:password@ in any URL scheme: the fallback when a library quotes a URL we did not know.
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)
_TEMPLATE_FIELDS = ("event_type", "aggregate_type", "aggregate_id", "id")
MAX_ERROR = 500  # characters of a destination error kept in last_error


class Verdict(enum.StrEnum):
    """How a failed delivery is retried."""

    TRANSIENT = "transient"  # may succeed later: retried after the backoff (or retry_after)
    PERMANENT = "permanent"  # can never succeed as it is: dead at once


class SendError(Exception):
    """A destination's own verdict on one event (an HTTP status, a nack, a returned message)."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class DeliveryFailed(RetryLater):
    """What the worker records for a transient failure: retried, after ``retry_after`` if set."""


class DeliveryRejected(PermanentError):
    """What the worker records for a permanent failure: the event goes dead at once."""


class DestinationUnhealthy(Exception):
    """health_check() failed: the destination is unreachable or did not answer in time."""


def envelope(event: OutboxEvent) -> bytes:
    """The JSON body every built-in destination sends: the event with its identity."""
    return orjson.dumps(
        {
            "id": event.id,
            "event_type": event.event_type,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "created_at": event.created_at,
            "headers": event.headers,
            "payload": event.payload,
        }
    )


def template(setting: str, text: str) -> str:
    """Check a routing key / subject / stream template: only the event's fields by name."""
    if not isinstance(text, str) or not text:
        raise ConfigurationError(f"{setting} must be a non-empty string")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ConfigurationError(f"{setting} {text!r} is not a valid template: {exc}") from None
    for name in names:
        if name not in _TEMPLATE_FIELDS:
            raise ConfigurationError(
                f"{setting} {text!r}: unknown field {{{name}}}; use "
                + ", ".join("{" + f + "}" for f in _TEMPLATE_FIELDS)
            )
    return text


def render(text: str, event: OutboxEvent) -> str:
    if "{" not in text:
        return text
    return text.format(
        event_type=event.event_type,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        id=event.id,
    )


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that must never be shown: its password and userinfo, and the whole
    URL as given (a webhook's path or query may be its token)."""
    out = [url]
    parts = urlsplit(url)
    if parts.password:
        out += [parts.password, unquote(parts.password)]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        out += [userinfo, unquote(userinfo)]
    return out


def safe_url(url: str) -> str:
    """A URL fit for logs and docs: scheme, host and port only."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class Destination(abc.ABC):
    """One target of relayed events. Subclasses implement ``send_batch``, ``_probe`` (the cheap
    round trip of ``health_check``) and the connection hooks, and may refine ``classify`` and
    ``retry_after``."""

    kind: ClassVar[str] = "destination"

    def __init__(
        self,
        *,
        name: str | None,
        max_batch: int,
        timeout: float | None,
        connect_timeout: float,
        secrets: Iterable[str] = (),
    ) -> None:
        self.name = name or self.kind
        if type(max_batch) is not int or max_batch < 1:
            raise ConfigurationError(f"{self.name}: max_batch must be a whole number >= 1")
        for label, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{self.name}: {label} must be positive")
        self.max_batch = max_batch
        # The whole send_batch call, as the worker's handler timeout for this route.
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._conn: Any = None
        self._conn_loop: asyncio.AbstractEventLoop | None = None
        self._conn_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:  # never the URL or a secret
        return f"<{type(self).__name__} {self.name!r}>"

    # -- the interface ----------------------------------------------------------------------

    @abc.abstractmethod
    async def send_batch(self, events: Sequence[OutboxEvent]) -> Mapping[int, BaseException]:
        """Send the events; return the failed ones by event id with their errors (empty: every
        event confirmed by the target). Raising fails the whole batch."""

    async def health_check(self, *, timeout: float = 5.0) -> None:
        """Connect and make one cheap round trip within ``timeout`` seconds; raise
        DestinationUnhealthy (with a redacted reason) if that fails."""
        try:
            await asyncio.wait_for(self._probe(), timeout)
        except Exception as exc:
            await self._reset()
            if isinstance(exc, TimeoutError):
                raise DestinationUnhealthy(f"{self.name}: no answer in time") from None
            raise DestinationUnhealthy(self.describe(exc)) from None

    def classify(self, exc: BaseException) -> Verdict:
        """Transient or permanent. Default: a SendError says which; a PermanentError is
        permanent; anything else (connection errors, timeouts) transient."""
        if isinstance(exc, SendError):
            return Verdict.PERMANENT if exc.permanent else Verdict.TRANSIENT
        if isinstance(exc, PermanentError):
            return Verdict.PERMANENT
        return Verdict.TRANSIENT

    def retry_after(self, exc: BaseException) -> float | None:
        """Seconds until the next attempt when the target said so (None: the backoff)."""
        value = getattr(exc, "retry_after", None)
        return float(value) if isinstance(value, int | float) and value >= 0 else None

    async def close(self) -> None:
        """Close this loop's connection, if any."""
        await self._reset()

    # -- what the route calls ----------------------------------------------------------------

    async def deliver(self, events: Sequence[OutboxEvent]) -> None:
        """Send a batch; raise BatchFailure with a classified, redacted error per failed event."""
        try:
            failures: Mapping[int, BaseException] = await self.send_batch(events)
        except Exception as exc:
            await self._reset()
            failures = {event.id: exc for event in events}
        if failures:
            raise BatchFailure({i: self.outcome(exc) for i, exc in failures.items()})

    def outcome(self, exc: BaseException) -> Exception:
        """The error the worker records: no traceback or cause of the original is kept, since a
        library's exception may quote a URL with its password."""
        message = self.describe(exc)
        if self.classify(exc) is Verdict.PERMANENT:
            return DeliveryRejected(message)
        return DeliveryFailed(message, retry_after=self.retry_after(exc))

    def describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, SendError):
            text = f"{type(exc).__name__}: {text}"
        return f"{self.name}: {self.redact(text)}"

    def redact(self, text: str) -> str:
        """text on one line, without any secret of this destination or any URL password."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _URL_USERINFO.sub(r"\1***\3", text)
        return " ".join(text.split())[:MAX_ERROR]

    # -- connections, one per event loop ----------------------------------------------------

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._conn_loop is not loop or self._conn_lock is None:
            # A connection belongs to its loop; one from a closed loop is dropped unclosed.
            self._conn, self._conn_loop, self._conn_lock = None, loop, asyncio.Lock()
        if self._conn is None:
            async with self._conn_lock:
                if self._conn is None:
                    self._conn = await asyncio.wait_for(self._connect(), self.connect_timeout)
        return self._conn

    async def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._conn_loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._disconnect(conn), self.connect_timeout)

    @abc.abstractmethod
    async def _connect(self) -> Any:
        """Open a connection (client, channel...) on the running loop."""

    @abc.abstractmethod
    async def _disconnect(self, conn: Any) -> None:
        """Close what _connect opened."""

    @abc.abstractmethod
    async def _probe(self) -> None:
        """One cheap round trip over this loop's connection."""
