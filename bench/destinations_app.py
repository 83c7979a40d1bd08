"""The app `python -m bench destinations` runs: "relay.*" routed to the destination named by
DBX_DEST (webhook, rabbitmq, nats, redis) at DBX_DEST_URL, its target in DBX_DEST_TARGET."""

from __future__ import annotations

import os

from dispatchbox import Dispatcher
from dispatchbox.destinations import Destination, NatsJetStream, RabbitMQ, RedisStreams, Webhook

BATCH = 500  # events per send_batch, as the plain-client loop sends them


def build() -> Destination:
    kind, url = os.environ["DBX_DEST"], os.environ["DBX_DEST_URL"]
    target = os.environ.get("DBX_DEST_TARGET", "")
    if kind == "webhook":
        return Webhook(url, secret=os.environ["DBX_DEST_SECRET"], concurrency=20, max_batch=100)
    if kind == "rabbitmq":
        return RabbitMQ(url, routing_key=target, max_batch=BATCH)
    if kind == "nats":
        return NatsJetStream(url, subject=target + ".{event_type}", max_batch=BATCH)
    if kind == "redis":
        return RedisStreams(url, stream=target, max_batch=BATCH)
    raise SystemExit(f"unknown DBX_DEST {kind!r}")


dispatcher = Dispatcher()
dispatcher.route("relay.*", to=build())
