"""The worker's fast decoding gives handlers exactly what the json module and the OutboxEvent
constructor would."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from dispatchbox.data.worker import Claimed, array_literal
from dispatchbox.events import OutboxEvent
from dispatchbox.worker import decode

DOCUMENTS = [
    '{"n": 1}',
    "{}",
    "[]",
    '"text"',
    "null",
    "true",
    "-0",
    "1.5",
    '{"a": [1, 2.5, "x", null, {"b": false}]}',
    # beyond 64 bits: orjson would return a float, silently; must stay an exact int
    '{"big": 123456789012345678901234567890}',
    "-92233720368547758090",
    "18446744073709551616",
    # a long run of digits inside a string is still a string
    '{"id": "12345678901234567890123"}',
    # orjson refuses these; the json module reads them
    "1e400",
    '{"x": -1e400}',
    '{"emoji": "\\ud83d\\ude00", "pl": "zażółć gęślą jaźń"}',
    '{"nested": ' * 50 + "1" + "}" * 50,
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_loads_equals_json_module(text: str) -> None:
    got = decode.loads(text)
    want = json.loads(text)
    assert got == want
    assert type(got) is type(want)
    if isinstance(want, dict) and "big" in want:
        assert isinstance(got["big"], int)


def _claimed(payload: str, headers: str) -> Claimed:
    now = datetime.now(UTC)
    return Claimed(
        7, "order", "42", "order.paid", payload, headers, 2, now, 1, 5, 0, None, 0, uuid.uuid4()
    )


@pytest.mark.parametrize(("payload", "headers"), [('{"n": 1}', "{}"), ("[1]", '{"trace": "t"}')])
def test_event_equals_the_constructor(payload: str, headers: str) -> None:
    item = _claimed(payload, headers)
    got = decode.event(item)
    want = OutboxEvent(
        id=item.id,
        aggregate_type=item.aggregate_type,
        aggregate_id=item.aggregate_id,
        event_type=item.event_type,
        payload=json.loads(payload),
        headers=json.loads(headers),
        attempts=item.attempts,
        created_at=item.created_at,
    )
    assert got == want
    assert repr(got) == repr(want)
    assert hash(got.id) == hash(want.id)
    with pytest.raises(AttributeError):
        got.id = 8  # type: ignore[misc]  # still frozen


def test_empty_headers_are_not_shared() -> None:
    # A handler that mutates its headers dict must not change the next event's.
    a = decode.event(_claimed("{}", "{}"))
    a.headers["x"] = 1
    assert decode.event(_claimed("{}", "{}")).headers == {}


def test_array_literal() -> None:
    token = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert array_literal([1, 2, 9_223_372_036_854_775_807]) == "{1,2,9223372036854775807}"
    assert array_literal([token]) == "{00000000-0000-4000-8000-000000000001}"
    assert array_literal([]) == "{}"
