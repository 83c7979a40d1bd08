"""Redis Streams destination (redis-py asyncio): ``XADD`` per event, a batch in one pipeline.

Each entry holds the fields ``id`` (the event id), ``event_type``, ``aggregate_type``,
``aggregate_id`` and ``body`` (the JSON envelope); its stream is ``stream`` (a template).
``maxlen`` trims the stream approximately (``MAXLEN ~``) on each add. Redis Streams do not
deduplicate: a reply lost in an outage after Redis applied the XADD means the event is sent
again, so a stream holds every event at least once and consumers skip an ``id`` they saw.
Connection errors and timeouts are transient; a command Redis refuses (``WRONGTYPE``, out of
memory under ``noeviction``...) is transient too, since the operator can fix the server.
"""

from __future__ import annotations

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


class RedisStreams(Destination):
    """``XADD stream [MAXLEN ~ maxlen] * id … body …`` for each event; ``timeout`` bounds each
    round trip."""

    kind = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str = "{event_type}",
        maxlen: int | None = None,
        name: str | None = None,
        timeout: float = 5.0,
        max_batch: int = 500,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("redis url must start with redis://, rediss:// or unix://")
        if maxlen is not None and (type(maxlen) is not int or maxlen < 1):
            raise ConfigurationError("redis maxlen must be a whole number >= 1")
        super().__init__(
            name=name,
            max_batch=max_batch,
            timeout=timeout + 5.0,
            connect_timeout=timeout,
            secrets=url_secrets(url),
        )
        self.url = url
        self.stream = template("redis stream", stream)
        self.maxlen = maxlen
        self.op_timeout = timeout

    async def send_batch(self, events: Sequence[OutboxEvent]) -> dict[int, BaseException]:
        from redis.exceptions import ResponseError

        client = await self._connection()
        pipe = client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                render(self.stream, event),
                {
                    "id": event.id,
                    "event_type": event.event_type,
                    "aggregate_type": event.aggregate_type,
                    "aggregate_id": event.aggregate_id,
                    "body": envelope(event),
                },
                maxlen=self.maxlen,
                approximate=True,
            )
        results = await pipe.execute(raise_on_error=False)
        failures: dict[int, BaseException] = {}
        for event, result in zip(events, results, strict=True):
            if isinstance(result, ResponseError):
                failures[event.id] = SendError(f"redis refused XADD: {result}")
            elif isinstance(result, BaseException):
                failures[event.id] = result
        return failures

    async def _connect(self) -> Any:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.op_timeout,
            socket_connect_timeout=self.connect_timeout,
            retry_on_timeout=False,
        )
        await client.ping()
        return client

    async def _disconnect(self, conn: Any) -> None:
        await conn.aclose()

    async def _probe(self) -> None:
        client = await self._connection()
        await client.ping()
