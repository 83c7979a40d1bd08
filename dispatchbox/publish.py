"""publish and publish_many: write events through the caller's connection and transaction."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import psycopg

from dispatchbox.data import publish as data
from dispatchbox.delivery import backpressure, checksum
from dispatchbox.errors import InvalidEvent

# publish_many sends this many events per statement: big enough to amortise the round trip,
# small enough to keep one statement's parameters a few MB.
BATCH_SIZE = 5000

_FIELDS = frozenset(
    {
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
        "headers",
        "idempotency_key",
        "priority",
        "max_attempts",
        "available_at",
        "expires_at",
    }
)
# Limits a publish checks, so that a bad event is refused at once with a clear message instead
# of failing in the database (and aborting the caller's transaction) or later in a worker: a
# name longer than a btree index entry allows fails when the event goes dead and is indexed.
# Event and aggregate types, aggregate ids and idempotency keys: characters.
MAX_NAME_CHARS = 255
MAX_KEY_CHARS = 1024
# Payload and headers, each, as JSON text (non-ASCII escaped).
MAX_JSON_BYTES = int(os.environ.get("DISPATCHBOX_MAX_PAYLOAD_BYTES") or 1024 * 1024)

_REQUIRED = ("aggregate_type", "aggregate_id", "event_type", "payload")
_REQUIRED_SET = frozenset(_REQUIRED)


# Not frozen: publish_many makes one per event, and a frozen dataclass's __init__ costs several
# times more (each field goes through object.__setattr__). Nothing outside this module sees it.
@dataclass(slots=True)
class _Row:
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: str
    headers: str
    idempotency_key: str | None
    priority: int
    max_attempts: int
    available_at: datetime | None
    expires_at: datetime | None
    checksum: str  # hex SHA-256 of the payload as jsonb text (delivery/checksum.py)


def _text(name: str, value: Any, *, allow_int: bool = False, limit: int = MAX_NAME_CHARS) -> str:
    if type(value) is str and 0 < len(value) <= limit and value.isprintable() and value.strip():
        return value  # the common case, first (printable: no NUL, no lone surrogate)
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEvent(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidEvent(f"{name} is {len(value):,} characters long; at most {limit:,}")
    _check_text(name, value)
    return value


def _check_text(name: str, value: str) -> None:
    """PostgreSQL text holds neither NUL nor a lone UTF-16 surrogate: refuse them here, before
    a server error would abort the caller's transaction."""
    if "\x00" in value:
        raise InvalidEvent(f"{name} contains a NUL character (\\u0000), which PostgreSQL refuses")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(
            f"{name} contains an unpaired surrogate, which is not valid Unicode text"
        ) from None


def _check_json_strings(name: str, value: Any) -> None:
    """Every string (keys included) of a decoded JSON document, checked as _check_text does."""
    if isinstance(value, str):
        _check_text(name, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(name, key)
            _check_json_strings(name, item)
    elif isinstance(value, list):
        for item in value:
            _check_json_strings(name, item)


# jsonb rejects NaN and Infinity; refuse them here rather than at the server.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The json module's own C encoder, made once: JSONEncoder.encode builds a new one on every call,
# which was half the cost of encoding a small payload. Same output and the same refusals;
# without a circular-reference memo, a cycle ends in RecursionError, refused below as well.
_C_ENCODE = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, _refuse, encode_basestring_ascii, None, ":", ",", False, False, False)
)


def _json(name: str, value: Any) -> str:
    try:
        text = _ENCODER.encode(value) if _C_ENCODE is None else "".join(_C_ENCODE(value, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            exc = ValueError("nested too deeply, or a reference cycle")
        raise InvalidEvent(f"{name} is not JSON-serialisable: {exc}") from None
    if len(text) > MAX_JSON_BYTES:  # ASCII-escaped: characters are bytes
        raise InvalidEvent(
            f"{name} is {len(text):,} bytes as JSON; at most {MAX_JSON_BYTES:,} "
            "(DISPATCHBOX_MAX_PAYLOAD_BYTES)"
        )
    # The text is ASCII (non-ASCII escaped), so NUL and surrogates appear as escapes; only then
    # is the document walked to tell them from an escaped backslash followed by "u0000".
    if "\\u0000" in text or "\\ud" in text:
        _check_json_strings(name, json.loads(text))
    return text


def _int(name: str, value: Any, low: int, high: float) -> int:
    if type(value) is int and low <= value <= high:
        return value  # the common case, first
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        bound = "" if math.isinf(high) else f" and {int(high)}"
        raise InvalidEvent(f"{name} must be an integer between {low}{bound}, got {value!r}")
    return value


def _validate(
    *,
    aggregate_type: Any,
    aggregate_id: Any,
    event_type: Any,
    payload: Any,
    headers: Any = None,
    idempotency_key: Any = None,
    priority: Any = 5,
    max_attempts: Any = 5,
    available_at: Any = None,
    expires_at: Any = None,
) -> _Row:
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidEvent(f"headers must be a mapping, got {type(headers).__name__}")
    for name, when in (("available_at", available_at), ("expires_at", expires_at)):
        if when is not None:
            if not isinstance(when, datetime):
                raise InvalidEvent(f"{name} must be a datetime")
            if when.tzinfo is None:
                raise InvalidEvent(f"{name} must be timezone-aware")
    # One encoding for the row and the checksum when the payload allows (nearly always); else
    # the compact encoding, which also refuses what is not JSON, and the checksum's slow path.
    fast = checksum.encode(payload)
    if fast is None:
        text = _json("payload", payload)
        digest = checksum.payload_sha256(payload)
    else:
        text, digest = fast
        if len(text) > MAX_JSON_BYTES or "\\u0000" in text:
            _json("payload", payload)  # refuses it with the slow path's words, or lets it pass
    return _Row(
        aggregate_type=_text("aggregate_type", aggregate_type),
        aggregate_id=_text("aggregate_id", aggregate_id, allow_int=True, limit=MAX_KEY_CHARS),
        event_type=_text("event_type", event_type),
        payload=text,
        headers=_json("headers", dict(headers)) if headers else "{}",
        idempotency_key=None
        if idempotency_key is None
        else _text("idempotency_key", idempotency_key, limit=MAX_KEY_CHARS),
        priority=_int("priority", priority, 1, 10),
        max_attempts=_int("max_attempts", max_attempts, 1, math.inf),
        available_at=available_at,
        expires_at=expires_at,
        checksum=digest,
    )


def publish(
    conn: psycopg.Connection[Any],
    *,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: Any,
    headers: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    priority: int = 5,
    max_attempts: int = 5,
    available_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> int:
    """Write one event in the caller's transaction; return its id.

    When ``idempotency_key`` was used before, nothing is written and the existing event's id is
    returned. The event becomes visible to workers when the caller commits. An event not
    delivered by ``expires_at`` goes dead as expired. BacklogFullError when a backlog limit is
    set for ``event_type`` (``set_backlog_limit``) and its pending backlog is above it.
    """
    row = _validate(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=payload,
        headers=headers,
        idempotency_key=idempotency_key,
        priority=priority,
        max_attempts=max_attempts,
        available_at=available_at,
        expires_at=expires_at,
    )
    backpressure.check(conn, (row.event_type,))
    params = {
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "event_type": row.event_type,
        "payload": row.payload,
        "headers": row.headers,
        "idempotency_key": row.idempotency_key,
        "priority": row.priority,
        "max_attempts": row.max_attempts,
        "available_at": row.available_at,
        "expires_at": row.expires_at,
        "payload_sha256": row.checksum,
    }
    new_id = data.insert_one(conn, params)
    if new_id is None:
        new_id = data.existing_id(conn, row.idempotency_key)
    return new_id


def _validate_many(events: Iterable[Mapping[str, Any]]) -> list[_Row]:
    rows: list[_Row] = []
    for index, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise InvalidEvent(f"event #{index} must be a dict, got {type(event).__name__}")
        if not _FIELDS.issuperset(event):
            unknown = sorted(set(event) - _FIELDS)
            raise InvalidEvent(f"event #{index}: unknown keyword(s) {', '.join(unknown)}")
        if not event.keys() >= _REQUIRED_SET:
            missing = [name for name in _REQUIRED if name not in event]
            raise InvalidEvent(f"event #{index}: missing {', '.join(missing)}")
        try:
            rows.append(_validate(**event))
        except InvalidEvent as exc:
            raise InvalidEvent(f"event #{index}: {exc}") from None
    return rows


# Binary COPY sends each field as bytes with no type of its own: the server reads it with the
# target column's input function. A jsonb field is a version byte and the JSON text, which we
# prepare as bytes and declare as bytea to COPY, so that psycopg's C bytes dumper passes them
# through untouched (jsonb_recv on the server still parses and checks every document).
_JSONB_VERSION = b"\x01"
_EMPTY_JSONB = _JSONB_VERSION + b"{}"


def _copy_batch(conn: psycopg.Connection[Any], batch: list[_Row]) -> list[int]:
    """The fast path (no idempotency keys, no delays): draw the ids, then one binary COPY.

    Two round trips whatever the number of events (COPY streams without waiting). COPY fires
    the statement-level NOTIFY trigger and the CHECK constraints like an INSERT;
    next_attempt_at takes its default, now().
    """
    ids = data.reserve_ids(conn, len(batch))
    with conn.cursor() as cur:
        _copy_rows(cur, ids, batch)
    return ids


# The COPY's columns' types, in publish_copy's order.
_COPY_TYPES = ["int8", "text", "text", "text", "bytea", "bytea", "int2", "int4"]
_COPY_TYPES += ["text", "timestamptz"]  # payload_sha256, expires_at


def _copy_rows(cur: psycopg.Cursor[Any], ids: list[int], batch: list[_Row]) -> None:
    with cur.copy(data.copy_statement()) as copy:
        copy.set_types(_COPY_TYPES)
        for event_id, r in zip(ids, batch, strict=True):
            copy.write_row(
                (
                    event_id,
                    r.aggregate_type,
                    r.aggregate_id,
                    r.event_type,
                    _JSONB_VERSION + r.payload.encode(),
                    _EMPTY_JSONB if r.headers == "{}" else _JSONB_VERSION + r.headers.encode(),
                    r.priority,
                    r.max_attempts,
                    r.checksum,
                    r.expires_at,
                )
            )


def publish_many(
    conn: psycopg.Connection[Any],
    events: Iterable[Mapping[str, Any]],
    *,
    batch_size: int = BATCH_SIZE,
) -> list[int]:
    """Write many events in the caller's transaction; return their ids in input order.

    Events without idempotency keys or delays go in one binary COPY (two round trips in all);
    otherwise one INSERT per ``batch_size`` events, plus one look-up when keys were used before.

    Every event is validated before the first is written, so bad input writes nothing.
    """
    rows = _validate_many(events)
    if not rows:
        return []
    backpressure.check(conn, {r.event_type for r in rows})
    if all(r.idempotency_key is None and r.available_at is None for r in rows):
        return _copy_batch(conn, rows)
    ids: list[int] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        params = {
            "aggregate_type": [r.aggregate_type for r in batch],
            "aggregate_id": [r.aggregate_id for r in batch],
            "event_type": [r.event_type for r in batch],
            "payload": [r.payload for r in batch],
            "headers": [r.headers for r in batch],
            "idempotency_key": [r.idempotency_key for r in batch],
            "priority": [r.priority for r in batch],
            "max_attempts": [r.max_attempts for r in batch],
            "available_at": [r.available_at for r in batch],
            "expires_at": [r.expires_at for r in batch],
            "payload_sha256": [r.checksum for r in batch],
        }
        result = data.insert_many(conn, params)
        skipped = {batch[i].idempotency_key for i, row in enumerate(result) if not row["inserted"]}
        existing: dict[str, int] = {}
        if skipped:
            # Keys used before, or twice in this batch: the event that holds each key wins.
            existing = data.existing_ids(conn, sorted(k for k in skipped if k is not None))
        for i, row in enumerate(result):
            if row["inserted"]:
                ids.append(int(row["new_id"]))
            else:
                key = batch[i].idempotency_key
                assert key is not None  # only keyed rows can conflict
                ids.append(int(existing[key]))
    return ids
