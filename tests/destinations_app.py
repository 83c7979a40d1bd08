"""The app the destination tests run `dispatchbox worker` with: one route, "relay.*", to the
destination named by DBX_DEST (webhook, rabbitmq, nats, redis) at DBX_DEST_URL, its queue,
subject prefix or stream in DBX_DEST_TARGET, a webhook secret in DBX_DEST_SECRET."""

from __future__ import annotations

import os

from dispatchbox import Dispatcher
from dispatchbox.destinations import Destination, NatsJetStream, RabbitMQ, RedisStreams, Webhook


def build() -> Destination:
    kind = os.environ["DBX_DEST"]
    url = os.environ["DBX_DEST_URL"]
    target = os.environ.get("DBX_DEST_TARGET", "")
    name = os.environ.get("DBX_DEST_NAME") or None
    if kind == "webhook":
        return Webhook(url, secret=os.environ.get("DBX_DEST_SECRET") or None, name=name, timeout=3)
    if kind == "rabbitmq":
        return RabbitMQ(url, routing_key=target, name=name, timeout=5)
    if kind == "nats":
        return NatsJetStream(url, subject=target + ".{event_type}", name=name, timeout=3)
    if kind == "redis":
        return RedisStreams(url, stream=target, name=name, timeout=3)
    raise SystemExit(f"unknown DBX_DEST {kind!r}")


dispatcher = Dispatcher()
dispatcher.route("relay.*", to=build())
