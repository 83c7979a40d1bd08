"""Assembles alerting from the environment: which channels are configured, one evaluator each.

The channels (Slack, e-mail, PagerDuty, webhook) live here in observability; the evaluator
(dispatchbox.maintenance.alerts) receives them and imports none of them, so the arrows run down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dispatchbox.maintenance.alert_config import AlertConfig, alerts_enabled
from dispatchbox.maintenance.alert_text import Channel
from dispatchbox.maintenance.alerts import AlertGroup
from dispatchbox.observability.mail import EmailConfig, EmailSender
from dispatchbox.observability.pagerduty import PagerDutyConfig, PagerDutySender
from dispatchbox.observability.slack import SlackConfig, SlackSender
from dispatchbox.observability.webhook import WebhookConfig, WebhookSender

logger = logging.getLogger("dispatchbox.alerts")


def _configs(env: Mapping[str, str] | None) -> list[tuple[str, object]]:
    """(description, config) of every configured channel; raises ConfigurationError."""
    found: list[tuple[str, object]] = []
    slack = SlackConfig.from_env(dict(env) if env is not None else None)
    if slack is not None:
        found.append((f"Slack {slack.destination}", slack))
    mail = EmailConfig.from_env(env)
    if mail is not None:
        found.append((f"e-mail to {mail.destination}", mail))
    pager = PagerDutyConfig.from_env(env)
    if pager is not None:
        found.append((f"PagerDuty at {pager.destination}", pager))
    hook = WebhookConfig.from_env(env)
    if hook is not None:
        found.append((hook.destination, hook))
    return found


def channels_from_env(env: Mapping[str, str] | None = None) -> list[Channel]:
    """A sender for every channel configured in the environment (maybe none)."""
    out: list[Channel] = []
    for _, config in _configs(env):
        if isinstance(config, SlackConfig):
            out.append(SlackSender(config))
        elif isinstance(config, EmailConfig):
            out.append(EmailSender(config))
        elif isinstance(config, PagerDutyConfig):
            out.append(PagerDutySender(config))
        elif isinstance(config, WebhookConfig):
            out.append(WebhookSender(config))
    return out


def evaluators_from_env(dsn: str, *, name: str | None = None) -> AlertGroup | None:
    """One evaluator per configured channel; None when no channel is configured or
    DISPATCHBOX_ALERT_ENABLED=0. Raises ConfigurationError for bad settings."""
    config = AlertConfig.from_env()
    channels = channels_from_env()
    if not channels or not alerts_enabled():
        return None
    return AlertGroup.for_channels(dsn, channels, config, name=name)


def start_evaluators(dsn: str, *, name: str | None = None) -> AlertGroup | None:
    """The started evaluators, or None. Never raises: a channel that cannot be built (its
    settings changed since the supervisor's check, a CA file gone) must not stop dispatch,
    so the process logs one line and runs without alerts."""
    group = None
    try:
        group = evaluators_from_env(dsn, name=name)
        if group is not None:
            group.start()
    except Exception as exc:
        if group is not None:
            group.stop()
        logger.error("alerts_unavailable error=%s: %s", type(exc).__name__, exc)
        return None
    return group


def check_env(env: Mapping[str, str] | None = None) -> str | None:
    """Validate the alerting settings; a line saying where alerts go (None: nowhere)."""
    configs = _configs(env)
    config = AlertConfig.from_env(env)
    if not configs:
        return None
    if not alerts_enabled(env):
        return "alerts off in this process (DISPATCHBOX_ALERT_ENABLED=0)"
    where = "; ".join(d for d, _ in configs)
    return f"alerts to {where}: {', '.join(config.enabled()) or 'none'}"
