"""Destinations without a service: the webhook signature, Retry-After, routing, classification,
redaction."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from dispatchbox import Dispatcher, OutboxEvent, PermanentError, RetryLater
from dispatchbox.destinations import RabbitMQ, RedisStreams, Webhook
from dispatchbox.destinations.base import DeliveryFailed, DeliveryRejected, SendError, Verdict
from dispatchbox.destinations.webhook import parse_retry_after, secret_key, sign
from dispatchbox.errors import BatchFailure, ConfigurationError
from dispatchbox.testing import run_handlers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event(i: int, event_type: str = "order.created") -> OutboxEvent:
    return OutboxEvent(
        id=i, aggregate_type="order", aggregate_id=str(i), event_type=event_type, payload={"n": i}
    )


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification: any receiver library verifies ours.
    got = sign(
        secret_key(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_webhook_request_headers_sign_the_exact_body() -> None:
    hook = Webhook("http://127.0.0.1:9/hook", secret=SECRET)
    body, headers = hook.request(event(42), now=1700000000)
    assert headers["webhook-id"] == "42"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == sign(secret_key(SECRET), "42", 1700000000, body)
    assert b'"id":42' in body and b'"event_type":"order.created"' in body


@pytest.mark.parametrize("bad", ["whsec_!!!", "whsec_c2hvcnQ="])
def test_a_bad_webhook_secret_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="webhook secret"):
        Webhook("http://127.0.0.1:9/hook", secret=bad)


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90)
    past = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(past, now=now.timestamp()) == 0.0


def test_route_exact_handler_wins_then_first_matching_route() -> None:
    d = Dispatcher()
    first = RedisStreams(name="first")
    second = RedisStreams(name="second")
    d.route("order.created", to=first)
    d.route("order.*", to=second)

    @d.handler("order.paid")
    def paid(e: OutboxEvent) -> None: ...

    spec_paid = d.get("order.paid")
    assert spec_paid is not None and spec_paid.func is paid
    created, shipped = d.get("order.created"), d.get("order.shipped")
    assert created is not None and created.destination == "first" and created.is_async
    assert shipped is not None and shipped.destination == "second"
    assert shipped.max_batch == second.max_batch
    assert d.get("invoice.issued") is None
    assert set(d.route_targets()) == {"first", "second"}


def test_route_configuration_errors() -> None:
    d = Dispatcher()
    d.route("order.*", to=RedisStreams(name="orders"))
    with pytest.raises(ConfigurationError, match="already registered"):
        d.route("order.*", to=RedisStreams(name="other"))
    with pytest.raises(ConfigurationError, match="two different destinations"):
        d.route("invoice.*", to=RedisStreams(name="orders"))
    with pytest.raises(ConfigurationError, match="must be a destination"):
        d.route("x.*", to=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="destination name"):
        d.route("y.*", to=RedisStreams(name="bad name with spaces"))


def test_classification_and_redaction() -> None:
    password = "Zq-pw-unique-7781"
    dest = RabbitMQ(f"amqp://app:{password}@broker.invalid:5672/vh")
    assert dest.classify(SendError("400", permanent=True)) is Verdict.PERMANENT
    assert dest.classify(PermanentError("no")) is Verdict.PERMANENT
    assert dest.classify(ConnectionError("down")) is Verdict.TRANSIENT
    leaked = OSError(f"cannot reach amqp://app:{password}@broker.invalid:5672/vh (refused)")
    out = dest.outcome(leaked)
    assert isinstance(out, DeliveryFailed) and password not in str(out)
    assert out.__cause__ is None and out.__traceback__ is None
    other = dest.outcome(OSError("see redis://u:hunter2-x@h:1/0"))
    assert "hunter2-x" not in str(other)
    assert password not in repr(dest)
    rejected = dest.outcome(SendError("HTTP 400", permanent=True))
    assert isinstance(rejected, DeliveryRejected) and isinstance(rejected, PermanentError)


def test_retry_later_carries_the_delay() -> None:
    hook = Webhook("http://127.0.0.1:9/hook")
    out = hook.outcome(SendError("HTTP 429", retry_after=7.0))
    assert isinstance(out, RetryLater) and out.retry_after == 7.0
    with pytest.raises(ValueError, match="retry_after"):
        RetryLater("x", retry_after=-1)


def test_deliver_raises_batch_failure_for_the_failed_events_only() -> None:
    class Half(RedisStreams):
        async def send_batch(self, events: Any) -> dict[int, BaseException]:
            return {e.id: SendError("nope", permanent=True) for e in events if e.id % 2}

    with pytest.raises(BatchFailure) as info:
        asyncio.run(Half(name="half").deliver([event(1), event(2), event(3)]))
    assert set(info.value.failures) == {1, 3}
    assert all(isinstance(e, DeliveryRejected) for e in info.value.failures.values())


def test_testing_run_handlers_finds_routed_types() -> None:
    seen: list[int] = []

    class Recorder(RedisStreams):
        async def send_batch(self, events: Any) -> dict[int, BaseException]:
            seen.extend(e.id for e in events)
            return {}

    d = Dispatcher()
    d.route("order.*", to=Recorder(name="rec"))
    run_handlers(d, [event(1), event(2, "order.paid")])
    assert seen == [1, 2]


def test_import_dispatchbox_loads_no_broker_client() -> None:
    code = (
        "import sys, dispatchbox, dispatchbox.destinations;"
        "from dispatchbox.destinations import RabbitMQ, NatsJetStream, RedisStreams;"
        "bad = [m for m in ('aio_pika', 'nats', 'redis', 'aiormq') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_toml_config_builds_routes_with_secrets_from_the_environment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatchbox.destinations.config import apply_file

    monkeypatch.setenv("DBX_T_AMQP", "amqp://app:Pw-from-env-1@127.0.0.1:5672/")
    monkeypatch.setenv("DBX_T_HOOK_SECRET", SECRET)
    path = tmp_path / "relay.toml"
    path.write_text(
        """
[destinations.orders]
type = "rabbitmq"
url_env = "DBX_T_AMQP"
exchange = "orders"

[destinations.billing]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret_env = "DBX_T_HOOK_SECRET"
timeout = 2

[[routes]]
pattern = "order.*"
to = "orders"

[[routes]]
pattern = "invoice.issued"
to = "billing"
"""
    )
    d = Dispatcher()
    apply_file(d, path)
    order, invoice = d.get("order.paid"), d.get("invoice.issued")
    assert order is not None and order.destination == "orders"
    assert invoice is not None and invoice.destination == "billing"
    billing = d.route_targets()["billing"]
    assert isinstance(billing, Webhook) and billing.key == secret_key(SECRET)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[destinations.x]\ntype = "redis"\nurl = "redis://u:pw@h:1/0"\n', "credentials"),
        ('[destinations.x]\ntype = "webhook"\nurl = "http://h/x"\nsecret = "s"\n', "secret_env"),
        ('[destinations.x]\ntype = "kafka"\n', "type must be one of"),
        ('[destinations.x]\ntype = "redis"\nurl_env = "DBX_T_UNSET_VAR"\n', "is not set"),
        (
            '[destinations.x]\ntype = "redis"\ncolour = 1\n[[routes]]\npattern="a"\nto="x"\n',
            "colour",
        ),
        ('[destinations.x]\ntype = "redis"\n[[routes]]\npattern = "a.*"\nto = "y"\n', "unknown"),
        ("[[routes]\n", "not valid TOML"),
    ],
)
def test_toml_config_errors_are_one_clear_line(tmp_path: Any, body: str, message: str) -> None:
    from dispatchbox.destinations.config import apply_file

    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigurationError, match=message) as info:
        apply_file(Dispatcher(), path)
    assert "\n" not in str(info.value) and "pw" not in str(info.value).replace("pwd", "")
