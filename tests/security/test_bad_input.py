"""Bad input at every edge, property-based (hypothesis): publish, the CLI and the HTTP API each
refuse it with one clear error, and nothing is written (the tables are unchanged)."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatchbox import publish, publish_many
from dispatchbox.errors import InvalidEvent
from dispatchbox.publish import MAX_JSON_BYTES
from tests.acceptance.test_api import AUTH, Server
from tests.conftest import run_cli

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def fingerprint(dsn: str) -> tuple[Any, ...]:
    """Everything a bad input could have written: the outbox, its history and the audit."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT md5(coalesce(string_agg(e::text, ',' ORDER BY id), '')) "
            "          FROM outbox_event e), "
            "       (SELECT count(*) FROM outbox_event_error), "
            "       (SELECT count(*) FROM outbox_dead_letter_audit)"
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def seeded(db_dsn: str) -> str:
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, "
            "attempts, last_error, dead_at) SELECT 'order', g::text, 'seed.event', 'dead', 5, "
            "'KeyError: x', now() FROM generate_series(1, 5) g"
        )
    return db_dsn


# -- publish -----------------------------------------------------------------------------------

NUL_OR_SURROGATE = st.one_of(
    st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=5), st.text(max_size=5)),
    st.builds(
        lambda a, s, b: a + s + b,
        st.text(max_size=5),
        st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
        st.text(max_size=5),
    ),
)
NOT_JSON = st.one_of(
    st.sets(st.integers(), min_size=1),
    st.binary(min_size=1),
    st.just(float("nan")),
    st.just(float("inf")),
    st.builds(object),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
)


def payload_with(bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A JSON-ish document with a bad value (or key) somewhere inside."""
    return st.one_of(
        bad,
        st.builds(lambda v: {"a": v}, bad),
        st.builds(lambda v: [1, {"b": [v]}], bad),
        st.builds(lambda k: {k: 1}, NUL_OR_SURROGATE),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(payload=st.one_of(payload_with(NOT_JSON), payload_with(NUL_OR_SURROGATE)))
def test_publish_refuses_payloads_postgresql_cannot_store(db_dsn: str, payload: Any) -> None:
    before = fingerprint(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        with pytest.raises(InvalidEvent) as err:
            publish(conn, aggregate_type="o", aggregate_id="1", event_type="t", payload=payload)
        # The caller's transaction is still usable: the refusal happened before the server.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(InvalidEvent):
            publish_many(
                conn,
                [
                    {
                        "aggregate_type": "o",
                        "aggregate_id": "1",
                        "event_type": "t",
                        "payload": {"ok": True},
                        "headers": {"h": payload},
                    }
                ],
            )
    assert "\n" not in str(err.value) and str(err.value).startswith("payload")
    assert fingerprint(db_dsn) == before


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURES)
@given(
    field=st.sampled_from(["event_type", "aggregate_type", "aggregate_id", "idempotency_key"]),
    value=st.one_of(
        st.just(""),
        st.text(string.whitespace, min_size=1, max_size=5),
        st.text(min_size=1025, max_size=1100),
        st.just("e" * 10_240),  # a 10 KB event type
        NUL_OR_SURROGATE,
        st.integers() if False else st.none(),
        st.lists(st.text(), max_size=2),
    ),
)
def test_publish_refuses_bad_names(db_dsn: str, field: str, value: Any) -> None:
    if field == "idempotency_key" and value is None:
        return  # None is "no key", which is fine
    event = {"aggregate_type": "o", "aggregate_id": "1", "event_type": "t", "payload": {}}
    event[field] = value
    before = fingerprint(db_dsn)
    with psycopg.connect(db_dsn) as conn, pytest.raises(InvalidEvent) as err:
        publish(conn, **event)
    assert field in str(err.value) and "\n" not in str(err.value)
    assert fingerprint(db_dsn) == before


def test_an_oversized_payload_is_refused_with_its_size_and_the_limit(db_dsn: str) -> None:
    before = fingerprint(db_dsn)
    big = {"blob": "x" * MAX_JSON_BYTES}
    with psycopg.connect(db_dsn) as conn, pytest.raises(InvalidEvent, match="at most 1,048,576"):
        publish(conn, aggregate_type="o", aggregate_id="1", event_type="t", payload=big)
    assert fingerprint(db_dsn) == before
    # Just under the limit is fine, and an escaped backslash before "u0000" is not a NUL.
    with psycopg.connect(db_dsn) as conn:
        publish(
            conn,
            aggregate_type="o",
            aggregate_id="1",
            event_type="t",
            payload={"blob": "x" * (MAX_JSON_BYTES - 100), "path": "C:\\u0000"},
        )


# -- the CLI -----------------------------------------------------------------------------------

BAD_CLI = [
    ("dead-events", "retry", "abc"),
    ("dead-events", "retry", "-1"),
    ("dead-events", "retry", "1e5"),
    ("dead-events", "retry", "99999999999999999999999"),
    ("dead-events", "retry-batch", "1", "x2"),
    ("dead-events", "show", "0x10"),
    ("dead-events", "list", "--since", "yesterday"),
    ("dead-events", "list", "--since", "2026-13-45"),
    ("dead-events", "list", "--until", "2026-01-01T25:00:00"),
    ("dead-events", "list", "--limit", "-5"),
    ("dead-events", "list", "--limit", "ten"),
    ("dead-events", "list", "--format", "xml"),
    ("dead-events", "list", "--no-such-flag"),
    ("dead-events", "stats", "--by", "color"),
    ("dead-events", "export", "--format", "yaml", "--output", "-"),
    ("dead-events", "purge", "--older-than-days", "-3"),
    ("dead-events", "retry-batch", "--all-matching", "--since", "not-a-date", "--yes"),
    ("dead-events", "retry-batch", "--all-matching", "--rate", "0", "--yes"),
    ("archive", "run", "--retention-days", "many"),
    (
        "publish",
        "--aggregate-type",
        "o",
        "--aggregate-id",
        "1",
        "--event-type",
        "t",
        "--payload",
        "{not json",
    ),
    (
        "publish",
        "--aggregate-type",
        "o",
        "--aggregate-id",
        "1",
        "--event-type",
        "t",
        "--payload",
        '{"a": "\\u0000"}',
    ),
    (
        "publish",
        "--aggregate-type",
        "o",
        "--aggregate-id",
        "1",
        "--event-type",
        "e" * 10_240,
        "--payload",
        "{}",
    ),
    (
        "publish",
        "--aggregate-type",
        "o",
        "--aggregate-id",
        "1",
        "--event-type",
        "",
        "--payload",
        "{}",
    ),
]


@pytest.mark.parametrize("args", BAD_CLI, ids=lambda a: " ".join(a)[:60])
def test_cli_refuses_bad_input_in_one_line(seeded: str, args: tuple[str, ...]) -> None:
    before = fingerprint(seeded)
    result = run_cli(*args, dsn=seeded)
    assert result.code in (1, 2), result
    assert result.stderr.startswith("dispatchbox: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert fingerprint(seeded) == before


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(
    ident=st.text(alphabet=string.printable, min_size=1, max_size=12).filter(
        lambda s: not s.strip().isdigit() and not s.startswith("-")
    )
)
def test_cli_refuses_any_malformed_id(seeded: str, ident: str) -> None:
    before = fingerprint(seeded)
    result = run_cli("dead-events", "retry", ident, dsn=seeded)
    assert result.code == 2 and result.stderr.count("\n") == 1, result
    assert fingerprint(seeded) == before


# -- the HTTP API ------------------------------------------------------------------------------


@pytest.fixture
def api(seeded: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(seeded, tmp_path / "serve.log")
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _refused(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(body=JSONISH.filter(lambda b: not (isinstance(b, dict) and set(b) & {"ids", "filter"})))
def test_api_refuses_malformed_retry_bodies(api: Server, seeded: str, body: Any) -> None:
    before = fingerprint(seeded)
    _refused(api.client.post("/api/dead-events/retry-batch", json=body, headers=AUTH))
    assert fingerprint(seeded) == before


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(
    body=st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        st.builds(lambda v: {"ids": v}, JSONISH.filter(lambda v: not isinstance(v, list))).map(
            lambda d: json.dumps(d).encode()
        ),
        st.builds(
            lambda v: {"ids": [v]},
            st.one_of(
                # pydantic reads "7" and 7.0 as the id 7: those are not malformed
                st.text().filter(lambda t: not t.strip().lstrip("+-").isdigit()),
                st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
                st.integers(max_value=0),
                st.integers(min_value=2**63),
            ),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_api_refuses_malformed_raw_bodies(api: Server, seeded: str, body: bytes) -> None:
    before = fingerprint(seeded)
    response = api.client.post(
        "/api/dead-events/retry-batch",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    _refused(response)
    assert fingerprint(seeded) == before


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(
    authorization=st.one_of(
        st.just(""),
        st.just("Bearer"),
        st.text(alphabet=string.printable.strip(), min_size=1, max_size=60).map(
            lambda t: "Bearer " + t
        ),
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=20).map(lambda t: "Basic " + t),
    ),
    path=st.sampled_from(["/api/dead-events", "/api/dead-events/1", "/api/dead-events/stats"]),
)
def test_api_refuses_bad_authorization_headers(
    api: Server, seeded: str, authorization: str, path: str
) -> None:
    before = fingerprint(seeded)
    headers = {"Authorization": authorization} if authorization else {}
    _refused(api.client.get(path, headers=headers))
    _refused(api.client.post("/api/dead-events/1/retry", headers=headers))
    assert fingerprint(seeded) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/dead-events?limit=-1",
        "/api/dead-events?limit=abc",
        "/api/dead-events?since=yesterday",
        "/api/dead-events?offset=99999999999999999999999",
        "/api/dead-events/stats?by=color",
        "/api/dead-events/abc",
    ],
)
def test_api_refuses_malformed_queries(api: Server, seeded: str, path: str) -> None:
    before = fingerprint(seeded)
    _refused(api.client.get(path, headers=AUTH))
    assert fingerprint(seeded) == before
