"""Routes and destinations from a TOML file: ``dispatchbox worker --config relay.toml``.

    [destinations.orders]
    type = "rabbitmq"
    url_env = "ORDERS_AMQP_URL"          # secrets only from the environment
    exchange = "orders"
    routing_key = "{event_type}"

    [destinations.billing]
    type = "webhook"
    url_env = "BILLING_WEBHOOK_URL"
    secret_env = "BILLING_WEBHOOK_SECRET"

    [[routes]]
    pattern = "order.*"
    to = "orders"

A destination's name is its table's name. Every other key is the destination class's keyword
argument of the same name. ``url`` may be written in the file only when it holds no password (a
broker on loopback); a URL with credentials, and every secret, comes from the environment
variable named by ``url_env`` / ``secret_env``. Routes are added in file order, after the ones
the app registered in Python (first match wins).
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dispatchbox.dispatcher import Dispatcher
from dispatchbox.errors import ConfigurationError

CLASSES = {
    "webhook": ("dispatchbox.destinations.webhook", "Webhook"),
    "rabbitmq": ("dispatchbox.destinations.rabbitmq", "RabbitMQ"),
    "nats": ("dispatchbox.destinations.nats", "NatsJetStream"),
    "redis": ("dispatchbox.destinations.redis_streams", "RedisStreams"),
}


def _env(path: str, name: str, key: str, variable: object) -> str:
    if not isinstance(variable, str) or not variable:
        raise ConfigurationError(f"{path}: destinations.{name}.{key} must name a variable")
    value = os.environ.get(variable)
    if not value:
        raise ConfigurationError(
            f"{path}: destinations.{name}.{key}: environment variable {variable} is not set"
        )
    return value


def build(path: str, name: str, table: dict[str, Any]) -> Any:
    """One destination from its TOML table."""
    options = dict(table)
    kind = options.pop("type", None)
    if kind not in CLASSES:
        raise ConfigurationError(
            f"{path}: destinations.{name}.type must be one of {', '.join(CLASSES)}, got {kind!r}"
        )
    if "secret" in options:
        raise ConfigurationError(
            f"{path}: destinations.{name}: put the secret in an environment variable and name "
            "it with secret_env, never in the file"
        )
    if "url" in options and "url_env" in options:
        raise ConfigurationError(f"{path}: destinations.{name}: give url or url_env, not both")
    if "url" in options:
        url = options["url"]
        if not isinstance(url, str) or urlsplit(url).password or "?" in url:
            raise ConfigurationError(
                f"{path}: destinations.{name}.url holds credentials or a query: move it to an "
                "environment variable and name it with url_env"
            )
    if "url_env" in options:
        options["url"] = _env(path, name, "url_env", options.pop("url_env"))
    if "secret_env" in options:
        options["secret"] = _env(path, name, "secret_env", options.pop("secret_env"))
    module, attr = CLASSES[kind]
    cls = getattr(importlib.import_module(module), attr)
    try:
        return cls(name=name, **options)
    except TypeError as exc:
        # An unknown or missing option; the message names the keyword, never a value.
        raise ConfigurationError(f"{path}: destinations.{name}: {exc}") from None


def apply_file(dispatcher: Dispatcher, file: str | Path) -> None:
    """Add the file's routes (with their destinations) to dispatcher."""
    path = str(file)
    try:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"--config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--config {path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"destinations", "routes"}
    if unknown:
        raise ConfigurationError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        raise ConfigurationError(f"{path}: [destinations] must be tables by name")
    built = {name: build(path, name, dict(table)) for name, table in tables.items()}
    routes = data.get("routes", [])
    if not isinstance(routes, list) or not routes:
        raise ConfigurationError(f"{path}: no [[routes]] (pattern = ..., to = ...)")
    for i, route in enumerate(routes, 1):
        if not isinstance(route, dict) or set(route) != {"pattern", "to"}:
            raise ConfigurationError(f"{path}: route {i} needs exactly pattern and to")
        target = built.get(route["to"])
        if target is None:
            raise ConfigurationError(
                f"{path}: route {i} goes to unknown destination {route['to']!r}"
            )
        dispatcher.route(route["pattern"], to=target)
