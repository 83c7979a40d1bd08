"""The services `python -m bench destinations` measures, each with its plain-client loop: a
RabbitMQ queue, a JetStream stream, a Redis stream, and a webhook receiver under uvicorn. Each
run gets fresh names ("p": the plain loop's target, "r": the relay's) and removes them after."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.common import ROOT
from dispatchbox import OutboxEvent
from dispatchbox.destinations.webhook import secret_key, sign

WINDOW = 500  # messages in flight per confirm round in the plain loop (the relay's max_batch)
SECRET = "whsec_" + base64.b64encode(b"dispatchbox-bench-webhook-key-32").decode()
EVENT_TYPE = "relay.bench"


class Kind:
    name = ""

    def __init__(self) -> None:
        self.tag = f"dbxb{uuid.uuid4().hex[:8]}"

    def url(self) -> str:
        raise NotImplementedError

    def target(self, which: str) -> str:
        return f"{self.tag}{which}"

    def setup(self) -> None: ...

    def count(self, which: str) -> int:
        raise NotImplementedError

    async def plain(self, msgs: list[tuple[OutboxEvent, bytes]]) -> None:
        raise NotImplementedError

    def teardown(self) -> None: ...


class Rabbit(Kind):
    name = "rabbitmq"

    def url(self) -> str:
        return "amqp://guest:guest@127.0.0.1:5672/"

    async def _channel(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        import aio_pika

        conn = await aio_pika.connect(self.url())
        try:
            return await op(await conn.channel())
        finally:
            await conn.close()

    def setup(self) -> None:
        async def declare(ch: Any) -> None:
            for which in ("p", "r"):
                await ch.declare_queue(self.target(which), durable=True)

        asyncio.run(self._channel(declare))

    def count(self, which: str) -> int:
        async def passive(ch: Any) -> int:
            queue = await ch.declare_queue(self.target(which), passive=True)
            return int(queue.declaration_result.message_count)

        return int(asyncio.run(self._channel(passive)))

    async def plain(self, msgs: list[tuple[OutboxEvent, bytes]]) -> None:
        import aio_pika

        conn = await aio_pika.connect(self.url())
        channel = await conn.channel(publisher_confirms=True)
        exchange, key = channel.default_exchange, self.target("p")
        for start in range(0, len(msgs), WINDOW):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/json",
                            message_id=str(event.id),
                            type=event.event_type,
                        ),
                        routing_key=key,
                        mandatory=True,
                    )
                    for event, body in msgs[start : start + WINDOW]
                )
            )
        await conn.close()

    def teardown(self) -> None:
        async def delete(ch: Any) -> None:
            for which in ("p", "r"):
                await ch.queue_delete(self.target(which))

        asyncio.run(self._channel(delete))


class Nats(Kind):
    name = "nats"

    def url(self) -> str:
        return "nats://127.0.0.1:4222"

    async def _js(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        import nats

        nc = await nats.connect(self.url())
        try:
            return await op(nc.jetstream())
        finally:
            await nc.close()

    def setup(self) -> None:
        async def add(js: Any) -> None:
            for which in ("p", "r"):
                await js.add_stream(name=self.target(which), subjects=[f"{self.target(which)}.>"])

        asyncio.run(self._js(add))

    def count(self, which: str) -> int:
        async def info(js: Any) -> int:
            return int((await js.stream_info(self.target(which))).state.messages)

        return int(asyncio.run(self._js(info)))

    async def plain(self, msgs: list[tuple[OutboxEvent, bytes]]) -> None:
        import nats

        nc = await nats.connect(self.url())
        js = nc.jetstream()
        subject = f"{self.target('p')}.{EVENT_TYPE}"
        for start in range(0, len(msgs), WINDOW):
            await asyncio.gather(
                *(
                    js.publish(subject, body, headers={"Nats-Msg-Id": str(event.id)})
                    for event, body in msgs[start : start + WINDOW]
                )
            )
        await nc.close()

    def teardown(self) -> None:
        async def delete(js: Any) -> None:
            for which in ("p", "r"):
                await js.delete_stream(self.target(which))

        asyncio.run(self._js(delete))


class Redis(Kind):
    name = "redis"

    def url(self) -> str:
        return "redis://127.0.0.1:6379/0"

    def count(self, which: str) -> int:
        import redis

        with redis.Redis.from_url(self.url()) as client:
            return int(client.xlen(self.target(which)))

    async def plain(self, msgs: list[tuple[OutboxEvent, bytes]]) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url())
        key = self.target("p")
        for start in range(0, len(msgs), WINDOW):
            pipe = client.pipeline(transaction=False)
            for event, body in msgs[start : start + WINDOW]:
                pipe.xadd(
                    key,
                    {
                        "id": event.id,
                        "event_type": event.event_type,
                        "aggregate_type": event.aggregate_type,
                        "aggregate_id": event.aggregate_id,
                        "body": body,
                    },
                )
            await pipe.execute()
        await client.aclose()

    def teardown(self) -> None:
        import redis

        with redis.Redis.from_url(self.url()) as client:
            client.delete(self.target("p"), self.target("r"))


class WebhookSink(Kind):
    """uvicorn serving bench/webhook_sink.py on a free loopback port; both loops post to it."""

    name = "webhook"
    CONCURRENCY = 20

    def __init__(self) -> None:
        super().__init__()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.counted = {"p": 0, "r": 0}

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def setup(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.webhook_sink:app", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self._total()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the webhook sink did not start")

    def _total(self) -> int:
        return int(httpx.get(self.url(), timeout=5).text)

    def mark(self, which: str) -> None:
        self.counted[which] = self._total()

    def count(self, which: str) -> int:
        # Requests since mark(which): the two loops run one after the other.
        return self._total() - self.counted[which]

    async def plain(self, msgs: list[tuple[OutboxEvent, bytes]]) -> None:
        key = secret_key(SECRET)
        gate = asyncio.Semaphore(self.CONCURRENCY)
        limits = httpx.Limits(max_connections=self.CONCURRENCY)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:

            async def post(event: OutboxEvent, body: bytes) -> None:
                async with gate:
                    ts = int(time.time())
                    headers = {
                        "content-type": "application/json",
                        "webhook-id": str(event.id),
                        "webhook-timestamp": str(ts),
                        "webhook-signature": sign(key, str(event.id), ts, body),
                    }
                    response = await client.post(self.url(), content=body, headers=headers)
                    response.raise_for_status()

            for start in range(0, len(msgs), WINDOW):
                await asyncio.gather(*(post(e, b) for e, b in msgs[start : start + WINDOW]))

    def teardown(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


KINDS: dict[str, type[Kind]] = {
    "rabbitmq": Rabbit,
    "nats": Nats,
    "redis": Redis,
    "webhook": WebhookSink,
}
