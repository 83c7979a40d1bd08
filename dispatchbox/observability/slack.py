"""Slack delivery for alerts: an incoming webhook, or a bot token and a channel (slack-sdk).

Configuration comes from the environment: ``DISPATCHBOX_SLACK_WEBHOOK_URL``, or
``DISPATCHBOX_SLACK_TOKEN`` with ``DISPATCHBOX_SLACK_CHANNEL``; ``DISPATCHBOX_SLACK_TIMEOUT``
(seconds, default 5) bounds every request and ``DISPATCHBOX_SLACK_API_URL`` points the bot
client at another Web API base (a proxy, or a test server).

The webhook URL and the token are secrets: they are kept out of ``repr``, and any text that
reaches a log has them replaced by ``***``. slack-sdk's own logging is switched off: it logs
request URLs at DEBUG and an error at every failure. A send never raises: it returns
False and logs one line (not a traceback); while Slack keeps failing, later failures are logged
at DEBUG only, and the first success after them says that delivery recovered (DeliveryLog).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.webhook import WebhookClient

from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alert_text import Notice
from dispatchbox.outbound import DeliveryLog

logger = logging.getLogger("dispatchbox.slack")

# slack-sdk's own logger, silenced: its DEBUG lines include the webhook URL (a secret), and it
# logs an ERROR at every failed request, where we promise one line per outage (see _report).
_sdk_logger = logging.getLogger("dispatchbox.slack.sdk")
_sdk_logger.disabled = True

DEFAULT_TIMEOUT = 5.0
DEFAULT_API_URL = "https://slack.com/api/"


@dataclass(frozen=True)
class SlackConfig:
    """Where alerts go. Exactly one of webhook_url or token (with channel) is set."""

    # Incoming webhook URL (DISPATCHBOX_SLACK_WEBHOOK_URL). Secret.
    webhook_url: str | None = field(default=None, repr=False)
    # Bot token, xoxb-... (DISPATCHBOX_SLACK_TOKEN). Secret.
    token: str | None = field(default=None, repr=False)
    # Channel for the bot token: #name or an id (DISPATCHBOX_SLACK_CHANNEL).
    channel: str | None = None
    # Seconds one request may take, connection included (DISPATCHBOX_SLACK_TIMEOUT).
    timeout: float = DEFAULT_TIMEOUT
    # Slack Web API base for the bot token (DISPATCHBOX_SLACK_API_URL).
    api_url: str = DEFAULT_API_URL

    def __post_init__(self) -> None:
        if self.webhook_url and self.token:
            raise ConfigurationError(
                "set either DISPATCHBOX_SLACK_WEBHOOK_URL or DISPATCHBOX_SLACK_TOKEN, not both"
            )
        if not self.webhook_url and not self.token:
            raise ConfigurationError(
                "Slack needs DISPATCHBOX_SLACK_WEBHOOK_URL, or DISPATCHBOX_SLACK_TOKEN with "
                "DISPATCHBOX_SLACK_CHANNEL"
            )
        if self.token and not self.channel:
            raise ConfigurationError("DISPATCHBOX_SLACK_TOKEN needs DISPATCHBOX_SLACK_CHANNEL")
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise ConfigurationError("DISPATCHBOX_SLACK_WEBHOOK_URL must be an http(s) URL")
        if not self.timeout > 0:
            raise ConfigurationError("DISPATCHBOX_SLACK_TIMEOUT must be a positive number")

    @property
    def destination(self) -> str:
        """Where messages go, without secrets: for logs."""
        return "incoming webhook" if self.webhook_url else f"channel {self.channel}"

    def secrets(self) -> list[str]:
        return [s for s in (self.webhook_url, self.token) if s]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SlackConfig | None:
        """The configuration in the environment, None when Slack is not configured at all."""
        source = os.environ if env is None else env
        webhook = source.get("DISPATCHBOX_SLACK_WEBHOOK_URL") or None
        token = source.get("DISPATCHBOX_SLACK_TOKEN") or None
        channel = source.get("DISPATCHBOX_SLACK_CHANNEL") or None
        if not webhook and not token:
            if channel:
                raise ConfigurationError(
                    "DISPATCHBOX_SLACK_CHANNEL is set but DISPATCHBOX_SLACK_TOKEN is not"
                )
            return None
        raw_timeout = source.get("DISPATCHBOX_SLACK_TIMEOUT") or str(DEFAULT_TIMEOUT)
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise ConfigurationError(
                f"DISPATCHBOX_SLACK_TIMEOUT must be a number of seconds, got {raw_timeout!r}"
            ) from None
        return cls(
            webhook_url=webhook,
            token=token,
            channel=channel,
            timeout=timeout,
            api_url=source.get("DISPATCHBOX_SLACK_API_URL") or DEFAULT_API_URL,
        )


class SlackSender:
    """The Slack channel: one message at a time; thread-safe; never raises."""

    name = "slack"
    incidents_only = False

    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log = DeliveryLog(logger, "slack", config.destination)
        # slack-sdk takes whole seconds; round up so a 0.5 s setting is not "no timeout".
        timeout = max(1, int(-(-config.timeout // 1)))
        # No retry handlers: a slow or failing Slack costs one bounded attempt per evaluation.
        if config.webhook_url:
            self._webhook: WebhookClient | None = WebhookClient(
                config.webhook_url, timeout=timeout, logger=_sdk_logger, retry_handlers=[]
            )
            self._web: WebClient | None = None
        else:
            self._webhook = None
            self._web = WebClient(
                token=config.token,
                base_url=config.api_url if config.api_url.endswith("/") else config.api_url + "/",
                timeout=timeout,
                logger=_sdk_logger,
                retry_handlers=[],
            )

    def send(self, notice: Notice | str) -> bool:
        """Post the notice's mrkdwn text (or a bare text); True when Slack accepted it."""
        text = notice if isinstance(notice, str) else notice.text
        with self._lock:
            try:
                if self._webhook is not None:
                    response = self._webhook.send(text=text, unfurl_links=False)
                    ok = response.status_code == 200
                    reason = f"HTTP {response.status_code}: {response.body}"
                else:
                    assert self._web is not None
                    result = self._web.chat_postMessage(
                        channel=self.config.channel or "", text=text, unfurl_links=False
                    )
                    ok = bool(result.get("ok"))
                    reason = str(result.get("error"))
            except Exception as exc:  # network, timeout, Slack API error: all the same to us
                ok = False
                reason = f"{type(exc).__name__}: {exc}"
            self._log.report(ok, reason, self.config.secrets())
            return ok
