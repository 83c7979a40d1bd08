"""What the destination tests read back from the real services: a RabbitMQ queue, a JetStream
stream, a Redis stream, and a local HTTP server that records (and verifies) webhook requests.
Each target gets a fresh name per test and is removed afterwards."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_" + base64.b64encode(b"dispatchbox-test-webhook-key-32b").decode()


class Target:
    """One fresh queue / stream / endpoint; ``ids()`` reads back every event id it received,
    in arrival order, duplicates included."""

    kind = ""
    service_port = 0

    def __init__(self) -> None:
        self.name = f"dbx{uuid.uuid4().hex[:10]}"

    def url(self, port: int | None = None) -> str:
        raise NotImplementedError

    def setup(self) -> None: ...

    def ids(self) -> list[int]:
        raise NotImplementedError

    def bodies(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def teardown(self) -> None: ...


class RabbitTarget(Target):
    kind = "rabbitmq"
    service_port = 5672

    def url(self, port: int | None = None) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port or 5672}/"

    async def _run(self, op: Callable[[Any], Any]) -> Any:
        import aio_pika

        conn = await aio_pika.connect(RABBITMQ_URL)
        try:
            channel = await conn.channel()
            return await op(channel)
        finally:
            await conn.close()

    def setup(self) -> None:
        async def declare(ch: Any) -> None:
            await ch.declare_queue(self.name, durable=True)

        asyncio.run(self._run(declare))

    def bodies(self) -> list[dict[str, Any]]:
        async def drain(ch: Any) -> list[dict[str, Any]]:
            queue = await ch.declare_queue(self.name, durable=True)
            out = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                body = json.loads(message.body)
                assert message.message_id == str(body["id"])
                assert message.delivery_mode == 2  # persistent
                out.append(body)
            return out

        result: list[dict[str, Any]] = asyncio.run(self._run(drain))
        return result

    def ids(self) -> list[int]:
        return [b["id"] for b in self.bodies()]

    def teardown(self) -> None:
        async def delete(ch: Any) -> None:
            await ch.queue_delete(self.name)

        asyncio.run(self._run(delete))


class NatsTarget(Target):
    kind = "nats"
    service_port = 4222

    def url(self, port: int | None = None) -> str:
        return f"nats://127.0.0.1:{port or 4222}"

    async def _run(self, op: Callable[[Any], Any]) -> Any:
        import nats

        nc = await nats.connect(NATS_URL)
        try:
            return await op(nc.jetstream())
        finally:
            await nc.close()

    def setup(self) -> None:
        async def add(js: Any) -> None:
            await js.add_stream(name=self.name, subjects=[f"{self.name}.>"])

        asyncio.run(self._run(add))

    def bodies(self) -> list[dict[str, Any]]:
        async def read(js: Any) -> list[dict[str, Any]]:
            info = await js.stream_info(self.name)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(self.name, seq)
                body = json.loads(msg.data)
                assert msg.headers["Nats-Msg-Id"] == str(body["id"])
                out.append(body)
            return out

        result: list[dict[str, Any]] = asyncio.run(self._run(read))
        return result

    def ids(self) -> list[int]:
        return [b["id"] for b in self.bodies()]

    def teardown(self) -> None:
        async def delete(js: Any) -> None:
            await js.delete_stream(self.name)

        asyncio.run(self._run(delete))


class RedisTarget(Target):
    kind = "redis"
    service_port = 6379

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or 6379}/0"

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(REDIS_URL)

    def bodies(self) -> list[dict[str, Any]]:
        with self._client() as client:
            entries = client.xrange(self.name)
        out = []
        for _, fields in entries:
            body = json.loads(fields[b"body"])
            assert int(fields[b"id"]) == body["id"]
            assert fields[b"event_type"].decode() == body["event_type"]
            out.append(body)
        return out

    def ids(self) -> list[int]:
        return [b["id"] for b in self.bodies()]

    def teardown(self) -> None:
        with self._client() as client:
            client.delete(self.name)


class WebhookReceiver(Target):
    """A real HTTP server on 127.0.0.1 that verifies each request's Standard Webhooks signature
    and answers with ``respond(event_id, attempt) -> (status, headers)`` (default 204)."""

    kind = "webhook"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.rejected_signatures = 0
        self.lock = threading.Lock()
        self.respond: Callable[[int, int], tuple[int, dict[str, str]]] = lambda i, n: (204, {})
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                key = base64.b64decode(SECRET.removeprefix("whsec_"))
                mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
                expected = "v1," + base64.b64encode(mac).decode()
                with receiver.lock:
                    if self.headers.get("webhook-signature") != expected:
                        receiver.rejected_signatures += 1
                        status, headers = 401, {}
                    else:
                        doc = json.loads(body)
                        assert str(doc["id"]) == msg_id
                        attempt = 1 + sum(1 for r in receiver.received if r["id"] == doc["id"])
                        status, headers = receiver.respond(doc["id"], attempt)
                        doc["_status"] = status
                        receiver.received.append(doc)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.service_port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.service_port}/hooks/{self.name}"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if 200 <= r["_status"] < 300]

    def ids(self) -> list[int]:
        return [b["id"] for b in self.bodies()]

    def teardown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TARGETS: dict[str, type[Target]] = {
    "webhook": WebhookReceiver,
    "rabbitmq": RabbitTarget,
    "nats": NatsTarget,
    "redis": RedisTarget,
}


class RelayWorker:
    """`dispatchbox worker` with tests/destinations_app.py routing relay.* to one target."""

    def __init__(
        self, dsn: str, kind: str, url: str, target: str, log: Path, *args: str, **env: str
    ) -> None:
        full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
        full.update(
            DISPATCHBOX_DSN=dsn,
            DBX_DEST=kind,
            DBX_DEST_URL=url,
            DBX_DEST_TARGET=target,
            DBX_DEST_SECRET=SECRET,
            **env,
        )
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatchbox",
                "worker",
                "--app",
                "tests.destinations_app:dispatcher",
                "--processes",
                "1",
                "--backoff-base",
                "0.05",
                "--backoff-max",
                "0.5",
                "--poll-interval",
                "0.2",
                *args,
            ],
            cwd=ROOT,
            env=full,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
