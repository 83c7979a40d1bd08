"""The e-mail alert channel: SMTP with STARTTLS (the standard library's smtplib and email).

Configuration comes from the environment: ``DISPATCHBOX_SMTP_HOST`` and
``DISPATCHBOX_ALERT_EMAIL_TO`` turn it on; ``DISPATCHBOX_SMTP_PORT`` (587),
``DISPATCHBOX_SMTP_TLS`` (``starttls``, the default; ``ssl`` for implicit TLS on 465; ``none``
only for a relay on this host, and never with a password), ``DISPATCHBOX_SMTP_USERNAME`` and
``DISPATCHBOX_SMTP_PASSWORD``, ``DISPATCHBOX_SMTP_CA_FILE`` (trust this CA bundle instead of the
system's), ``DISPATCHBOX_SMTP_TIMEOUT`` (10 s, for every network step) and
``DISPATCHBOX_ALERT_EMAIL_FROM``. The server's certificate and host name are always verified.
The password is a secret: kept out of ``repr`` and blanked in every log line.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alert_text import Notice
from dispatchbox.outbound import DeliveryLog, positive_seconds

logger = logging.getLogger("dispatchbox.email")

TLS_MODES = ("starttls", "ssl", "none")
_LOCAL = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class EmailConfig:
    """An SMTP server and who gets the alerts."""

    # SMTP server (DISPATCHBOX_SMTP_HOST).
    host: str
    # Recipients (DISPATCHBOX_ALERT_EMAIL_TO, comma-separated).
    to: tuple[str, ...]
    # Sender address (DISPATCHBOX_ALERT_EMAIL_FROM); default dispatchbox@<host>.
    sender: str = ""
    # Port (DISPATCHBOX_SMTP_PORT): 587 for starttls, 465 for ssl.
    port: int = 0
    # starttls | ssl | none (DISPATCHBOX_SMTP_TLS).
    tls: str = "starttls"
    # Login (DISPATCHBOX_SMTP_USERNAME, DISPATCHBOX_SMTP_PASSWORD); none when unset.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # CA bundle to verify the server with, instead of the system's (DISPATCHBOX_SMTP_CA_FILE).
    ca_file: str | None = None
    # Seconds each network step may take (DISPATCHBOX_SMTP_TIMEOUT).
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ConfigurationError(
                f"DISPATCHBOX_SMTP_TLS must be one of {', '.join(TLS_MODES)}, got {self.tls!r}"
            )
        if not self.to or any("@" not in a for a in self.to):
            raise ConfigurationError("DISPATCHBOX_ALERT_EMAIL_TO must list e-mail addresses")
        if self.tls == "none" and (self.password or self.host not in _LOCAL):
            raise ConfigurationError(
                "DISPATCHBOX_SMTP_TLS=none is only for a relay on this host, without a password"
            )
        if bool(self.username) != bool(self.password):
            raise ConfigurationError(
                "DISPATCHBOX_SMTP_USERNAME and DISPATCHBOX_SMTP_PASSWORD go together"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigurationError("DISPATCHBOX_SMTP_PORT must be a TCP port")
        if not self.timeout > 0:
            raise ConfigurationError("DISPATCHBOX_SMTP_TIMEOUT must be positive")
        if self.ca_file is not None:
            # Loaded here, at configuration time, so that a bad bundle stops `dispatchbox
            # worker` once with one line instead of every worker process in a restart loop.
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"DISPATCHBOX_SMTP_CA_FILE {self.ca_file!r} is not a readable PEM CA bundle:"
                    f" {exc.strerror or exc}"
                ) from None

    @property
    def effective_port(self) -> int:
        return self.port or (465 if self.tls == "ssl" else 587)

    @property
    def destination(self) -> str:
        """Where messages go, without secrets: for logs."""
        return f"{', '.join(self.to)} via {self.host}:{self.effective_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmailConfig | None:
        """The configuration in the environment; None when e-mail alerts are not configured."""
        source = os.environ if env is None else env
        host = (source.get("DISPATCHBOX_SMTP_HOST") or "").strip()
        to = tuple(a.strip() for a in (source.get("DISPATCHBOX_ALERT_EMAIL_TO") or "").split(","))
        to = tuple(a for a in to if a)
        if not host and not to:
            return None
        if not host or not to:
            raise ConfigurationError(
                "e-mail alerts need both DISPATCHBOX_SMTP_HOST and DISPATCHBOX_ALERT_EMAIL_TO"
            )
        raw_port = (source.get("DISPATCHBOX_SMTP_PORT") or "0").strip()
        if not raw_port.isdigit():
            raise ConfigurationError(f"DISPATCHBOX_SMTP_PORT must be a number, got {raw_port!r}")
        return cls(
            host=host,
            to=to,
            sender=(source.get("DISPATCHBOX_ALERT_EMAIL_FROM") or "").strip(),
            port=int(raw_port),
            tls=(source.get("DISPATCHBOX_SMTP_TLS") or "starttls").strip().lower(),
            username=source.get("DISPATCHBOX_SMTP_USERNAME") or None,
            password=source.get("DISPATCHBOX_SMTP_PASSWORD") or None,
            ca_file=source.get("DISPATCHBOX_SMTP_CA_FILE") or None,
            timeout=positive_seconds(
                "DISPATCHBOX_SMTP_TIMEOUT", source.get("DISPATCHBOX_SMTP_TIMEOUT"), 10.0
            ),
        )


class EmailSender:
    """The e-mail channel: one message per notice to every recipient; never raises."""

    name = "email"
    incidents_only = False

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log = DeliveryLog(logger, "email", config.destination)
        self._context = ssl.create_default_context(cafile=config.ca_file)

    def message(self, notice: Notice) -> EmailMessage:
        cfg = self.config
        msg = EmailMessage()
        msg["Subject"] = notice.summary
        msg["From"] = cfg.sender or f"dispatchbox@{cfg.host}"
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="dispatchbox")
        # Mail clients thread a trigger and its resolve together.
        msg["X-Dispatchbox-Incident"] = notice.incident_key
        msg["X-Dispatchbox-Action"] = notice.action
        msg.set_content(notice.plain + "\n")
        return msg

    def send(self, notice: Notice) -> bool:
        """Deliver over SMTP; True when the server accepted the message for every recipient."""
        cfg = self.config
        with self._lock:
            try:
                self._deliver(self.message(notice))
                ok, reason = True, ""
            except Exception as exc:  # refused, timed out, TLS or login failed: one failure
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            self._log.report(ok, reason, [s for s in (cfg.password,) if s])
            return ok

    def _deliver(self, msg: EmailMessage) -> None:
        cfg = self.config
        port = cfg.effective_port
        smtp: smtplib.SMTP
        if cfg.tls == "ssl":
            smtp = smtplib.SMTP_SSL(cfg.host, port, timeout=cfg.timeout, context=self._context)
        else:
            smtp = smtplib.SMTP(cfg.host, port, timeout=cfg.timeout)
        with smtp:
            smtp.ehlo()
            if cfg.tls == "starttls":
                # starttls() raises SMTPNotSupportedError when the server does not offer it:
                # never fall back to sending the password in clear.
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if cfg.username and cfg.password:
                smtp.login(cfg.username, cfg.password)
            refused = smtp.send_message(msg)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
