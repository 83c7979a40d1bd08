"""Payload checksums: the SHA-256 of every event's payload, taken at publish, so that an export
or a redrive can tell when a payload was changed since.

The checksum is of the payload as PostgreSQL writes jsonb as text (keys by length then bytes,
", " and ": " between items, numbers as numeric prints them): the SQL function
``outbox_payload_sha256(payload)`` (migration 0009) computes the same value from the stored
payload, so checks run inside PostgreSQL (exports, redrives, psql) without reading payloads into
Python. publish computes it in Python (``payload_sha256``) from the value it encodes, because its
fast path (binary COPY) cannot run SQL per row; a test holds the two equal on awkward payloads.
Events written before migration 0009 have NULL: unknown, never reported as a mismatch.
"""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
)
from typing import Any

import psycopg

from dispatchbox.data import delivery as data
from dispatchbox.filters import DeadEventFilter

logger = logging.getLogger("dispatchbox.repository")


def payload_sha256(payload: Any) -> str:
    """Hex SHA-256 of ``payload`` as jsonb text; the payload must already be JSON-serialisable
    (publish checks that first)."""
    fast = encode(payload)
    text = jsonb_text(payload) if fast is None else fast[0]
    if fast is not None:
        return fast[1]
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def encode(payload: Any) -> tuple[str, str] | None:
    """The fast path of publish: ``(payload as jsonb text, its hex SHA-256)``, or None when the
    payload needs the slow path (a float in exponent form or -0.0, a key that is not a string,
    a subclass, NaN, something not JSON at all): the payload with its objects in jsonb's key
    order, written by the json module's C encoder in jsonb's layout. publish sends this text,
    so one encoding serves both the row and the checksum."""
    try:
        text = "".join(_C_ENCODE(_jsonb_ordered(payload), 0))
        data = text.encode("utf-8")  # a lone surrogate cannot be: the slow path says why
    except (_Unusual, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return text, hashlib.sha256(data).hexdigest()


class _Unusual(Exception):
    """A value the C encoder would not write as jsonb does (a float in exponent form or -0.0,
    a key that is not a string, a subclass): jsonb_text handles it."""


def _refuse(value: Any) -> Any:
    raise _Unusual


_C_ENCODE = c_make_encoder(None, _refuse, encode_basestring, None, ": ", ", ", False, False, False)
_PLAIN = (str, int, bool, type(None))


def _jsonb_ordered(value: Any) -> Any:
    """``value`` with every object's keys in jsonb's order (byte length, then bytes), or
    _Unusual when the C encoder's output would differ from jsonb's text."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is dict:
        keys = tuple(value)
        order = _ORDERS.get(keys, _UNSEEN)
        if order is _UNSEEN:
            order = _order(keys)
        if order is None:  # already in jsonb's order: rebuild only if a value needs it
            for item in value.values():
                if type(item) not in _PLAIN:
                    return {key: _jsonb_ordered(item) for key, item in value.items()}
            return value
        return {
            key: item if type(item := value[key]) in _PLAIN else _jsonb_ordered(item)
            for key in order
        }
    if t is list or t is tuple:
        return [item if type(item) in _PLAIN else _jsonb_ordered(item) for item in value]
    if t is float:
        text = float.__repr__(value)
        if "e" in text or (value == 0 and text.startswith("-")):
            raise _Unusual
        return value
    raise _Unusual


def jsonb_text(value: Any) -> str:
    """``value`` as PostgreSQL prints it once stored as jsonb (``payload::text``)."""
    if type(value) is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, item in value.items():
            # Later duplicates win, as in jsonb (json turns 1 and "1" into the same key).
            items[key if type(key) is str else _key(key)] = item
        keys = sorted(items, key=_key_order)
        return (
            "{" + ", ".join(encode_basestring(k) + ": " + jsonb_text(items[k]) for k in keys) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(item) for item in value) + "]"
    if isinstance(value, str):
        return encode_basestring(str.__str__(value))
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _numeric(float.__repr__(value))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Key order per key tuple: payloads of one event type share their keys, so the sort runs once.
# None: the keys are in jsonb's order already. Bounded, so odd payloads cannot grow it forever.
_ORDERS: dict[tuple[Any, ...], tuple[str, ...] | None] = {}
_ORDERS_MAX = 10_000
_UNSEEN: Any = object()


def _order(keys: tuple[Any, ...]) -> tuple[str, ...] | None:
    try:
        ascii_keys = "".join(keys).isascii()  # one C call; TypeError: a key is not a str
    except TypeError:
        raise _Unusual from None
    # ASCII: characters are bytes, so (length, text) is jsonb's order, from two C sorts.
    order = tuple(sorted(sorted(keys), key=len) if ascii_keys else sorted(keys, key=_key_order))
    result = None if order == keys else order
    if len(_ORDERS) >= _ORDERS_MAX:
        _ORDERS.clear()
    _ORDERS[keys] = result
    return result


def _key(key: Any) -> str:
    """A non-string dict key as the json module writes it."""
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return (len(raw), raw)


def _numeric(text: str) -> str:
    """A float's JSON text as numeric prints it: no exponent, the scale the text implied."""
    if "e" not in text and "E" not in text:
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    number = Decimal(text)
    out = format(number, "f")
    return out[1:] if number.is_zero() and out.startswith("-") else out


def mismatched(conn: psycopg.Connection[Any], ids: list[int]) -> list[int]:
    """Of these events, those whose payload no longer matches the checksum taken at publish."""
    if not ids:
        return []
    return data.checksum_mismatched(conn, ids)


def mismatched_dead(
    conn: psycopg.Connection[Any], filter: DeadEventFilter, limit: int = 1000
) -> list[int]:
    """Dead events matching a dead-event filter whose payload no longer matches (at most
    ``limit`` ids, lowest first): what a redrive by filter is about to send again."""
    return data.checksum_mismatched_dead(conn, filter, limit)


def report(action: str, ids: list[int]) -> dict[str, Any]:
    """Log events whose payload changed since publish; the audit details that record them
    (empty when none)."""
    if not ids:
        return {}
    logger.warning(
        "payload_checksum_mismatch action=%s count=%d ids=%s: payload changed since publish",
        action,
        len(ids),
        ids[:20],
    )
    return {"payload_mismatch": ids[:100], "payload_mismatch_count": len(ids)}
