"""Payload redaction: JSON paths masked wherever an event leaves dispatchbox for a reader who
may not see payloads (CLI output, exports, the HTTP API, the console, logs).

    DISPATCHBOX_REDACT=payload.card.number,headers.authorization
    DISPATCHBOX_PAYLOAD_ROLES=alice,ops-oncall     (readers who see payloads unmasked)

A path starts at ``payload`` or ``headers`` and names object keys from there; a list on the way
applies the rest of the path to each of its items. Header names are matched ignoring case (as
HTTP does), payload keys exactly. A masked value becomes the string ``"***"`` (the key stays, so
a reader sees that something was there). A *role* is the name dispatchbox knows a reader by:
the API token's name, the OS user on the CLI (the actor recorded in the audit trail), the
console's signed-in user. Roles listed in DISPATCHBOX_PAYLOAD_ROLES see payloads as stored;
every other role, and logs, get the masked copy. With DISPATCHBOX_REDACT unset nothing is masked.

``redact(event_dict, role)`` is the one function every output calls; it never changes its input.
Imports nothing of dispatchbox but errors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import orjson

from dispatchbox.errors import ConfigurationError

MASK = "***"
REDACT_ENV = "DISPATCHBOX_REDACT"
ROLES_ENV = "DISPATCHBOX_PAYLOAD_ROLES"
ROOTS = ("payload", "headers")
LOG_ROLE = "log"  # what logs are written as: masked unless listed in DISPATCHBOX_PAYLOAD_ROLES

R = TypeVar("R")


@dataclass(frozen=True)
class Redaction:
    """Paths to mask (each a tuple of keys, the first ``payload`` or ``headers``) and the roles
    that see payloads unmasked."""

    paths: tuple[tuple[str, ...], ...] = ()
    payload_roles: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, paths: str | None, roles: str | None = None) -> Redaction:
        parsed: list[tuple[str, ...]] = []
        for raw in (paths or "").split(","):
            text = raw.strip()
            if not text:
                continue
            keys = tuple(text.split("."))
            if keys[0] not in ROOTS or len(keys) < 2 or not all(keys):
                raise ConfigurationError(
                    f"{REDACT_ENV}: {text!r} is not a path like payload.card.number or "
                    "headers.authorization"
                )
            parsed.append(keys)
        names = frozenset(r.strip() for r in (roles or "").split(",") if r.strip())
        return cls(tuple(parsed), names)

    def applies_to(self, role: str | None) -> bool:
        return bool(self.paths) and role not in self.payload_roles

    def redact(self, event: Mapping[str, Any], role: str | None) -> dict[str, Any]:
        out = dict(event)
        if not self.applies_to(role):
            return out
        for root, *rest in self.paths:
            if root in out:
                out[root] = _masked(out[root], rest, ignore_case=root == "headers")
        return out


def _masked(value: Any, path: list[str], *, ignore_case: bool) -> Any:
    """A copy of value with the path's target masked; untouched parts are shared, not copied."""
    if isinstance(value, list):
        return [_masked(item, path, ignore_case=ignore_case) for item in value]
    if not isinstance(value, dict) or not path:
        return value
    key, rest = path[0], path[1:]
    out = dict(value)
    for k in value:
        if k == key or (ignore_case and isinstance(k, str) and k.lower() == key.lower()):
            out[k] = MASK if not rest else _masked(value[k], rest, ignore_case=ignore_case)
    return out


@cache
def _from_env(paths: str | None, roles: str | None) -> Redaction:
    return Redaction.parse(paths, roles)


def configured() -> Redaction:
    """The process's redaction, from DISPATCHBOX_REDACT and DISPATCHBOX_PAYLOAD_ROLES."""
    return _from_env(os.environ.get(REDACT_ENV), os.environ.get(ROLES_ENV))


def redact(event_dict: Mapping[str, Any], role: str | None) -> dict[str, Any]:
    """The event as ``role`` may see it: the configured paths masked unless the role has payload
    access. Takes any mapping with ``payload`` and/or ``headers`` keys; returns a new dict."""
    return configured().redact(event_dict, role)


def redact_record(record: R, role: str | None) -> R:
    """A record dataclass (DeadEvent, EventDetail) with its payload and headers redacted."""
    redaction = configured()
    if not redaction.applies_to(role) or not dataclasses.is_dataclass(record):
        return record
    fields = {k: getattr(record, k) for k in ROOTS if hasattr(record, k)}
    return dataclasses.replace(record, **redaction.redact(fields, role))  # type: ignore[type-var]


def redact_json(doc: str, role: str | None) -> str:
    """A JSON document (one exported event) with the paths masked; unchanged when none apply."""
    redaction = configured()
    if not redaction.applies_to(role):
        return doc
    value = orjson.loads(doc)
    if isinstance(value, dict):
        value = redaction.redact(value, role)
    return orjson.dumps(value).decode()


def redact_cell(column: str, cell: str | None, role: str | None) -> str | None:
    """One CSV cell: the payload and headers columns hold JSON text, redacted like events."""
    redaction = configured()
    if cell is None or column not in ROOTS or not redaction.applies_to(role):
        return cell
    masked = redaction.redact({column: orjson.loads(cell)}, role)[column]
    return orjson.dumps(masked).decode()
