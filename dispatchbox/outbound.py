"""What every outbound HTTP sender shares (the alert channels of dispatchbox.observability and
the webhook destination): URL checks, secret redaction, one log line per outage.

A channel that keeps failing would otherwise log at every evaluation round; this logs the first
failure at WARNING, the next ones at DEBUG, and one INFO line when a message gets through again.
Every reason passes through ``redact`` first, so a password, routing key, webhook secret or token
that an exception happens to quote never reaches a log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from urllib.parse import unquote

import httpx

from dispatchbox.errors import ConfigurationError


def http_url(setting: str, raw: str) -> httpx.URL:
    """raw parsed as an absolute http(s) URL; ConfigurationError naming the setting otherwise.
    The URL itself stays out of the message: it may hold a token."""
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ConfigurationError(f"{setting} is not a valid URL") from None
    if url.scheme not in ("http", "https"):
        raise ConfigurationError(f"{setting} must be an http(s) URL")
    if not url.host:
        raise ConfigurationError(f"{setting} has no host")
    if url.port is not None and not 0 < url.port <= 65535:  # httpx accepts any number
        raise ConfigurationError(f"{setting} has a port out of range")
    return url


def url_secrets(raw: str) -> list[str]:
    """The forms in which a secret URL may be quoted: as typed, as httpx normalises it (lower-case
    host, no default port, percent-encoded), and its path and query alone, raw and decoded."""
    url = httpx.URL(raw)
    out = [raw, str(url)]
    tail = url.raw_path.decode("ascii")
    if tail != "/":
        out += [tail, unquote(tail)]
    if url.userinfo:
        out.append(url.userinfo.decode("ascii"))
    return out


def redact(text: str, secrets: Iterable[str]) -> str:
    """text with every secret replaced by ***, on one line, at most 300 characters."""
    # Longest first: a whole URL goes before its path does.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(text.split())[:300]


class _HttpxRedactor(logging.Filter):
    """httpx logs every request's URL at INFO ("HTTP Request: POST <url> ..."), normalised. For a
    URL whose path and query (or userinfo) were registered as secret, the record stays but its URL
    becomes scheme://host/***; any other registered secret quoted in a record becomes ***."""

    def __init__(self) -> None:
        super().__init__()
        self.tails: set[tuple[bytes, bytes]] = set()
        self.secrets: set[str] = set()

    def _masked(self, arg: object) -> object:
        if isinstance(arg, httpx.URL) and (arg.userinfo, arg.raw_path) in self.tails:
            return f"{arg.scheme}://{arg.host}/***"
        return arg

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._masked(a) for a in record.args)
        if self.secrets:
            text = record.getMessage()
            if any(s in text for s in self.secrets):
                record.msg, record.args = redact(text, self.secrets), None
        return True


_redactor: _HttpxRedactor | None = None
_redactor_lock = threading.Lock()


def hide_in_httpx_logs(*, url: str | None = None, secrets: Iterable[str] = ()) -> None:
    """Keep a secret URL's path and query (and other secrets) out of httpx's log records. One
    filter per process, however many senders are built."""
    global _redactor
    with _redactor_lock:
        if _redactor is None:
            _redactor = _HttpxRedactor()
            logging.getLogger("httpx").addFilter(_redactor)
        if url is not None:
            parsed = httpx.URL(url)
            if parsed.raw_path != b"/" or parsed.userinfo:
                _redactor.tails.add((parsed.userinfo, parsed.raw_path))
        _redactor.secrets.update(s for s in secrets if s)


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
