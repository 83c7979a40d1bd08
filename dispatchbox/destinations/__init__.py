"""Built-in destinations: relay outbox events to an HTTP webhook, RabbitMQ, NATS JetStream or
Redis Streams with ``dispatcher.route("order.*", to=RabbitMQ(...))``.

Owns: the one shared interface (``base.Destination``: ``send_batch``, ``health_check``,
``classify``, ``retry_after``), the JSON envelope every destination sends, secret redaction of
destination errors, one module per destination, and the TOML route file of ``dispatchbox worker
--config`` (``config.py``).

Layer: domain (docs/en/architecture.md). May import, only downward: ``dispatchbox.dispatcher``,
``dispatchbox.errors``, ``dispatchbox.events``, and the base helper ``dispatchbox.outbound``
(httpx log redaction shared with the alert channels); never the worker, observability, the CLI
or the API. Broker client libraries (aio-pika, nats-py, redis-py) are optional extras, imported
inside the destination that needs them when it first connects, so ``import dispatchbox`` stays
fast and a worker host installs only the clients it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatchbox.destinations.base import Destination, Verdict, envelope

if TYPE_CHECKING:
    from dispatchbox.destinations.nats import NatsJetStream
    from dispatchbox.destinations.rabbitmq import RabbitMQ
    from dispatchbox.destinations.redis_streams import RedisStreams
    from dispatchbox.destinations.webhook import Webhook

__all__ = [
    "Destination",
    "NatsJetStream",
    "RabbitMQ",
    "RedisStreams",
    "Verdict",
    "Webhook",
    "envelope",
]

_LAZY = {
    "Webhook": "dispatchbox.destinations.webhook",
    "RabbitMQ": "dispatchbox.destinations.rabbitmq",
    "NatsJetStream": "dispatchbox.destinations.nats",
    "RedisStreams": "dispatchbox.destinations.redis_streams",
}


def __getattr__(name: str) -> Any:
    # The destination modules are cheap (their client libraries load on first connect), but
    # only the ones used are imported at all.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dispatchbox.destinations' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
