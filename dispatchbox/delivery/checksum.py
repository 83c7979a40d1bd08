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
from json.encoder import encode_basestring
from typing import Any

import psycopg

from dispatchbox import queries

logger = logging.getLogger("dispatchbox.repository")


def payload_sha256(payload: Any) -> str:
    """Hex SHA-256 of ``payload`` as jsonb text; the payload must already be JSON-serialisable
    (publish checks that first)."""
    return hashlib.sha256(jsonb_text(payload).encode("utf-8")).hexdigest()


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
    return [int(r["id"]) for r in queries.fetch_all(conn, "checksum_mismatch_ids", {"ids": ids})]


def mismatched_dead(
    conn: psycopg.Connection[Any], filter_params: dict[str, Any], limit: int = 1000
) -> list[int]:
    """Dead events matching a dead-event filter whose payload no longer matches (at most
    ``limit`` ids, lowest first): what a redrive by filter is about to send again."""
    rows = queries.fetch_all(conn, "checksum_mismatch_dead", {**filter_params, "limit": limit})
    return [int(r["id"]) for r in rows]


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
