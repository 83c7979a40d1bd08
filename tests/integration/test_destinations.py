"""Relays through the real `dispatchbox worker` to the real services (RabbitMQ, NATS JetStream,
Redis, a local HTTP server), read back from each service and compared with the outbox."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.destinations import NatsJetStream, RabbitMQ, RedisStreams, Webhook
from dispatchbox.destinations.base import DestinationUnhealthy
from tests.brokers import ROOT, TARGETS, RelayWorker, Target, WebhookReceiver, wait_until
from tests.conftest import run_cli
from tests.tcp_proxy import TcpProxy

KINDS = list(TARGETS)


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    made = TARGETS[request.param]()
    made.setup()
    yield made
    made.teardown()


def publish(dsn: str, n: int, *, start: int = 0, max_attempts: int = 100) -> list[int]:
    events = [
        {
            "aggregate_type": "order",
            "aggregate_id": str(start + i),
            "event_type": "relay.created",
            "payload": {"n": start + i, "text": "zażółć"},
            "max_attempts": max_attempts,
        }
        for i in range(n)
    ]
    with psycopg.connect(dsn) as conn:
        ids = publish_many(conn, events)
        conn.commit()
    return ids


def statuses(dsn: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM outbox_event GROUP BY 1").fetchall()
    return Counter({s: n for s, n in rows})


def rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT id, status, attempts, last_error, destination, next_attempt_at, "
            "last_error_at, payload FROM outbox_event"
        )
        names = [c.name for c in cur.description or []]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def test_relay_delivers_every_event_exactly_once(
    db_dsn: str, target: Target, tmp_path: Path
) -> None:
    ids = publish(db_dsn, 300)
    worker = RelayWorker(db_dsn, target.kind, target.url(), target.name, tmp_path / "w.log")
    try:
        wait_until(lambda: statuses(db_dsn)["done"] == 300, 60, "300 events done")
    finally:
        assert worker.stop() == 0, worker.log()
    bodies = target.bodies()
    received = Counter(b["id"] for b in bodies)
    # No outage, so nothing was sent twice: every event once, nothing else.
    assert received == Counter(ids)
    by_id = rows(db_dsn)
    for body in bodies:
        assert body["event_type"] == "relay.created"
        assert body["payload"] == by_id[body["id"]]["payload"]
    assert all(r["attempts"] == 1 for r in by_id.values())


@pytest.mark.fault
def test_events_sent_while_the_destination_is_cut_arrive_once_it_is_back(
    db_dsn: str, target: Target, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", target.service_port)
    worker = RelayWorker(
        db_dsn, target.kind, target.url(proxy.port), target.name, tmp_path / "w.log"
    )
    try:
        before = publish(db_dsn, 100)
        wait_until(lambda: statuses(db_dsn)["done"] == 100, 60, "the first 100 delivered")
        proxy.cut()
        during = publish(db_dsn, 100, start=100)
        # The outage is real: deliveries of the second batch fail and are retried.
        wait_until(
            lambda: any(
                r["attempts"] >= 2 and r["last_error"]
                for i, r in rows(db_dsn).items()
                if i in set(during)
            ),
            60,
            "failed attempts while the destination is cut",
        )
        proxy.restore()
        wait_until(lambda: statuses(db_dsn)["done"] == 200, 90, "all 200 delivered after restore")
    finally:
        code = worker.stop()
        proxy.close()
    assert code == 0, worker.log()
    received = Counter(target.ids())
    assert set(received) == set(before) | set(during), "an event was lost"
    by_id = rows(db_dsn)
    duplicates = {i: n for i, n in received.items() if n > 1}
    # At least once: a duplicate can only be an event whose confirmation was lost in the cut,
    # so one retried (attempts > 1); JetStream drops those by Nats-Msg-Id.
    assert all(by_id[i]["attempts"] > 1 for i in duplicates), duplicates
    if target.kind == "nats":
        assert not duplicates
    for r in by_id.values():
        assert r["status"] == "done"
        if r["attempts"] > 1:
            assert r["destination"] == target.kind  # the failure was recorded per destination


def test_webhook_statuses_retry_after_and_dead_letters_per_destination(
    db_dsn: str, tmp_path: Path
) -> None:
    hook = WebhookReceiver()

    def respond(event_id: int, attempt: int) -> tuple[int, dict[str, str]]:
        if event_id % 4 == 0:
            return 422, {}  # permanent: dead at once
        if event_id % 4 == 1 and attempt == 1:
            return 429, {"Retry-After": "120"}  # transient, next attempt in 2 minutes
        if event_id % 4 == 2 and attempt == 1:
            return 503, {}  # transient, the backoff decides
        return 200, {}

    hook.respond = respond
    ids = publish(db_dsn, 40)
    worker = RelayWorker(
        db_dsn, "webhook", hook.url(), "", tmp_path / "w.log", DBX_DEST_NAME="billing-hooks"
    )
    permanent = {i for i in ids if i % 4 == 0}
    later = {i for i in ids if i % 4 == 1}
    try:
        wait_until(
            lambda: (
                statuses(db_dsn)["done"] == len(ids) - len(permanent) - len(later)
                and statuses(db_dsn)["dead"] == len(permanent)
            ),
            60,
            "the 200/503 events done and the 422 ones dead",
        )
    finally:
        assert worker.stop() == 0, worker.log()
    assert hook.rejected_signatures == 0
    by_id = rows(db_dsn)
    for i in permanent:
        assert by_id[i]["status"] == "dead" and by_id[i]["attempts"] == 1
        assert by_id[i]["destination"] == "billing-hooks"
        assert "HTTP 422" in by_id[i]["last_error"]
        assert by_id[i]["last_error"].startswith("DeliveryRejected: billing-hooks:")
    for i in later:
        wait = (by_id[i]["next_attempt_at"] - by_id[i]["last_error_at"]).total_seconds()
        assert by_id[i]["status"] == "pending" and 119 <= wait <= 121, wait
        assert by_id[i]["last_error"].startswith("DeliveryFailed: billing-hooks: HTTP 429")

    listed = run_cli(
        "dead-events", "list", "--destination", "billing-hooks", "--format", "json", dsn=db_dsn
    )
    assert listed.code == 0, listed.stderr
    assert {e["id"] for e in json.loads(listed.stdout)} == permanent
    assert all(e["destination"] == "billing-hooks" for e in json.loads(listed.stdout))
    none = run_cli("dead-events", "list", "--destination", "other", "--format", "json", dsn=db_dsn)
    assert json.loads(none.stdout) == []
    stats = run_cli("dead-events", "stats", "--by", "destination", "--format", "json", dsn=db_dsn)
    groups = json.loads(stats.stdout)["by_destination"]
    assert [(g["key"], g["count"]) for g in groups] == [("billing-hooks", len(permanent))]
    table = run_cli("dead-events", "stats", "--by", "destination", dsn=db_dsn)
    assert "billing-hooks" in table.stdout and "DESTINATION" in table.stdout
    out = tmp_path / "dead.csv"
    exported = run_cli(
        "dead-events", "export", "--format", "csv", "--output", str(out),
        "--destination", "billing-hooks", dsn=db_dsn,
    )  # fmt: skip
    assert exported.code == 0, exported.stderr
    lines = out.read_text().splitlines()
    assert "destination" in lines[0].split(",") and len(lines) == 1 + len(permanent)
    status = run_cli("db", "status", dsn=db_dsn)
    assert "destinations (breaker, dead events)" in status.stdout
    assert re.search(rf"billing-hooks\s+.*\s{len(permanent)} dead", status.stdout), status.stdout
    retried = run_cli(
        "dead-events", "retry-batch", "--all-matching", "--destination", "billing-hooks",
        "--yes", dsn=db_dsn,
    )  # fmt: skip
    assert retried.code == 0, retried.stderr
    assert statuses(db_dsn)["dead"] == 0
    hook.teardown()


def test_no_secret_reaches_errors_logs_or_exports(db_dsn: str, tmp_path: Path) -> None:
    password = "Dbx-Pw-7c1e-unlikely"
    ids = publish(db_dsn, 5, max_attempts=2)
    # RabbitMQ refuses the login: its error is about our credentials, and must not quote them.
    worker = RelayWorker(
        db_dsn,
        "rabbitmq",
        f"amqp://guest:{password}@127.0.0.1:5672/",
        "nowhere",
        tmp_path / "w.log",
        "--log-level",
        "DEBUG",
    )
    try:
        wait_until(lambda: statuses(db_dsn)["dead"] == len(ids), 60, "events dead")
    finally:
        worker.stop()
    with psycopg.connect(db_dsn) as conn:
        texts = conn.execute(
            "SELECT coalesce(last_error, '') FROM outbox_event "
            "UNION ALL SELECT message || coalesce(traceback, '') FROM outbox_event_error"
        ).fetchall()
    assert texts and all(password not in t for (t,) in texts)
    assert any("rabbitmq" in t for (t,) in texts)
    exported = run_cli("dead-events", "export", "--format", "jsonl", "--output", "-", dsn=db_dsn)
    assert exported.code == 0 and exported.stdout.count("\n") == len(ids)
    assert password not in exported.stdout
    assert password not in worker.log()


@pytest.mark.parametrize(
    "destination",
    [
        lambda: RabbitMQ("amqp://guest:guest@127.0.0.1:5672/"),
        lambda: NatsJetStream("nats://127.0.0.1:4222"),
        lambda: RedisStreams("redis://127.0.0.1:6379/0"),
    ],
    ids=["rabbitmq", "nats", "redis"],
)
def test_health_check_against_the_service_and_through_a_cut(destination: Any) -> None:
    healthy = destination()
    asyncio.run(healthy.health_check(timeout=5))
    real = healthy.url.rsplit(":", 1)[1].split("/")[0]
    proxy = TcpProxy("127.0.0.1", int(real))
    try:
        through = type(healthy)(healthy.url.replace(f":{real}", f":{proxy.port}"))

        async def check_cut_restore() -> None:
            await through.health_check(timeout=5)
            proxy.cut()
            with pytest.raises(DestinationUnhealthy):
                await through.health_check(timeout=2)
            proxy.restore()
            await through.health_check(timeout=5)
            await through.close()

        asyncio.run(check_cut_restore())
    finally:
        proxy.close()


def test_webhook_health_check_is_bounded() -> None:
    hook = WebhookReceiver()
    try:
        asyncio.run(Webhook(hook.url()).health_check(timeout=3))
    finally:
        hook.teardown()
    with pytest.raises(DestinationUnhealthy, match="webhook"):
        asyncio.run(Webhook(hook.url()).health_check(timeout=3))


def test_worker_config_file_routes_to_redis(db_dsn: str, tmp_path: Path) -> None:
    from tests.brokers import RedisTarget

    stream = RedisTarget()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[destinations.events]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
        f'stream = "{stream.name}"\nmaxlen = 100000\n\n'
        '[[routes]]\npattern = "relay.*"\nto = "events"\n'
    )
    ids = publish(db_dsn, 50)
    log = tmp_path / "w.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatchbox", "worker", "--app", "tests.empty_app:dispatcher",
             "--config", str(config), "--processes", "1", "--poll-interval", "0.2"],
            cwd=ROOT, env={**os.environ, "DISPATCHBOX_DSN": db_dsn}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(lambda: statuses(db_dsn)["done"] == 50, 60, "50 events relayed")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()
    try:
        assert Counter(stream.ids()) == Counter(ids)
    finally:
        stream.teardown()


def test_worker_refuses_a_bad_config_file_in_one_line(db_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[destinations.x]\ntype = "redis"\nurl = "redis://u:Pw-in-file-5@h:1/0"\n')
    result = run_cli(
        "worker", "--app", "tests.empty_app:dispatcher", "--config", str(config),
        "--processes", "1", dsn=db_dsn, timeout=60,
    )  # fmt: skip
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "url_env" in lines[0] and "Pw-in-file-5" not in result.stderr
