"""RabbitMQ destination (aio-pika): persistent messages with publisher confirms.

A batch is published on one confirming channel without waiting between messages, then its
confirms are awaited together: the broker acks (the message is safe in every queue it was routed
to) or nacks each one. ``mandatory`` is on, so a message no queue is bound for comes back
(basic.return) and is a failure of that event, as is a nack; both are transient (a binding or a
queue may be added; after ``max_attempts`` the event is dead). Messages carry ``message_id`` =
the event id and ``type`` = the event type, so consumers can deduplicate a redelivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from dispatchbox.destinations.base import (
    Destination,
    SendError,
    envelope,
    render,
    template,
    url_secrets,
)
from dispatchbox.errors import ConfigurationError
from dispatchbox.events import OutboxEvent


class RabbitMQ(Destination):
    """Publish each event to ``exchange`` ("" is the default exchange, where the routing key
    names a queue) with ``routing_key`` (a template: ``{event_type}``, ``{aggregate_type}``,
    ``{aggregate_id}``, ``{id}``). ``timeout`` bounds the confirms of one batch."""

    kind = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "",
        routing_key: str = "{event_type}",
        name: str | None = None,
        timeout: float = 10.0,
        max_batch: int = 500,
        mandatory: bool = True,
    ) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError("rabbitmq url must start with amqp:// or amqps://")
        super().__init__(
            name=name,
            max_batch=max_batch,
            timeout=timeout + 5.0,
            connect_timeout=timeout,
            secrets=url_secrets(url),
        )
        self.url = url
        self.exchange_name = exchange
        self.routing_key = template("rabbitmq routing_key", routing_key)
        self.confirm_timeout = timeout
        self.mandatory = mandatory

    async def send_batch(self, events: Sequence[OutboxEvent]) -> dict[int, BaseException]:
        import aio_pika

        connection, channel, exchange = await self._connection()
        messages = [
            aio_pika.Message(
                envelope(event),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                message_id=str(event.id),
                type=event.event_type,
            )
            for event in events
        ]
        # Every publish is on the wire before the first confirm is awaited: one round trip of
        # latency for the batch, not one per message.
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    exchange.publish(
                        message,
                        routing_key=render(self.routing_key, event),
                        mandatory=self.mandatory,
                    )
                    for message, event in zip(messages, events, strict=True)
                ),
                return_exceptions=True,
            ),
            self.confirm_timeout,
        )
        failures: dict[int, BaseException] = {}
        broken = False
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                failures[event.id] = self._failure(result)
                broken = broken or not isinstance(result, aio_pika.exceptions.DeliveryError)
        if broken or channel.is_closed or connection.is_closed:
            await self._reset()
        return failures

    def _failure(self, exc: BaseException) -> BaseException:
        from aio_pika.exceptions import DeliveryError, PublishError

        if isinstance(exc, PublishError):
            return SendError(
                f"unroutable: no queue bound for routing key (exchange "
                f"{self.exchange_name!r}), message returned"
            )
        if isinstance(exc, DeliveryError):
            return SendError(f"broker nacked the message (exchange {self.exchange_name!r})")
        return exc

    async def _connect(self) -> Any:
        import aio_pika

        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            if self.exchange_name:
                # passive: the exchange is the operator's to declare; a missing one is an error
                exchange = await channel.get_exchange(self.exchange_name, ensure=True)
            else:
                exchange = channel.default_exchange
        except BaseException:
            await connection.close()
            raise
        return connection, channel, exchange

    async def _disconnect(self, conn: Any) -> None:
        await conn[0].close()

    async def _probe(self) -> None:
        # Opening the connection and channel (and finding the exchange) is a round trip, and
        # so is a channel-level declare of nothing; a closed connection is reopened.
        connection, channel, _ = await self._connection()
        if connection.is_closed or channel.is_closed:
            await self._reset()
            connection, channel, _ = await self._connection()
        probe = await connection.channel(publisher_confirms=False)
        await probe.close()
