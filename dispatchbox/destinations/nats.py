"""NATS JetStream destination (nats-py): publish with acknowledgement.

Each event is published to ``subject`` (a template) with header ``Nats-Msg-Id`` = the event id,
so the stream drops a redelivery inside its duplicate window (2 minutes by default: see the
stream's ``duplicate_window``); an ack that says ``duplicate`` counts as delivered. A batch's
publishes run concurrently and each waits for its own ack. No stream for the subject (no
responders) and a stream error are transient: a stream may be created; after ``max_attempts``
the event is dead.
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


class NatsJetStream(Destination):
    """Publish each event to ``subject`` (``{event_type}``, ``{aggregate_type}``,
    ``{aggregate_id}``, ``{id}``); ``stream``, when set, must be the stream that stores it
    (JetStream refuses the message otherwise). ``timeout`` bounds each acknowledgement."""

    kind = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        subject: str = "{event_type}",
        stream: str | None = None,
        name: str | None = None,
        timeout: float = 5.0,
        max_batch: int = 500,
    ) -> None:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigurationError("nats url must start with nats://, tls://, ws:// or wss://")
        super().__init__(
            name=name,
            max_batch=max_batch,
            timeout=timeout + 5.0,
            connect_timeout=timeout,
            secrets=url_secrets(url),
        )
        self.url = url
        self.subject = template("nats subject", subject)
        self.stream = stream
        self.ack_timeout = timeout

    async def send_batch(self, events: Sequence[OutboxEvent]) -> dict[int, BaseException]:
        from nats.errors import ConnectionClosedError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import APIError, NoStreamResponseError

        nc, js = await self._connection()

        async def publish(event: OutboxEvent) -> None:
            await js.publish(
                render(self.subject, event),
                envelope(event),
                timeout=self.ack_timeout,
                stream=self.stream,
                headers={"Nats-Msg-Id": str(event.id)},
            )

        results = await asyncio.gather(*(publish(e) for e in events), return_exceptions=True)
        failures: dict[int, BaseException] = {}
        for event, result in zip(events, results, strict=True):
            if isinstance(result, NoStreamResponseError):
                failures[event.id] = SendError("no JetStream stream stores this subject")
            elif isinstance(result, APIError):
                failures[event.id] = SendError(f"JetStream refused it: {result.description}")
            elif isinstance(result, BaseException):
                failures[event.id] = result
        if (
            any(isinstance(r, ConnectionClosedError | NatsTimeout | OSError) for r in results)
            or not nc.is_connected
        ):
            await self._reset()
        return failures

    async def _connect(self) -> Any:
        import nats

        async def quiet(_exc: Exception) -> None:
            # nats-py prints connection errors through this callback; ours go through deliver
            # (redacted), so the client's own reports are dropped.
            return None

        nc = await nats.connect(
            self.url,
            connect_timeout=self.connect_timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        return nc, nc.jetstream(timeout=self.ack_timeout)

    async def _disconnect(self, conn: Any) -> None:
        await conn[0].close()

    async def _probe(self) -> None:
        nc, js = await self._connection()
        if not nc.is_connected:
            await self._reset()
            nc, js = await self._connection()
        await js.account_info()  # a JetStream round trip: the server and JetStream answer
