"""A redrive operation's records (outbox_redrive_operation's row, a canary's verdict), the
``--canary`` value's parser, and the breaker gate that reads the delivery controls' breakers
from the database. RedriveService (service.py) runs operations on them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import delivery
from dispatchbox.errors import InvalidFilter
from dispatchbox.filters import DeadEventFilter

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


def parse_canary(text: str) -> tuple[str, float]:
    """``1%`` -> ("percent", 1.0); ``200`` -> ("count", 200). InvalidFilter otherwise."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1])
            if 0 < value <= 100:
                return ("percent", value)
        else:
            count = int(raw)
            if count >= 1:
                return ("count", float(count))
    except ValueError:
        pass
    raise InvalidFilter(f"--canary must be a percentage (1%) or a number of events, got {text!r}")


@dataclass(frozen=True)
class CanaryVerdict:
    sample: int
    done: int
    dead: int
    open: int
    gone: int
    success_rate: float | None
    required: float
    new_fingerprints: list[dict[str, Any]]
    passed: bool
    reason: str


@dataclass(frozen=True)
class RedriveOperation:
    id: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    actor: str
    mode: str
    phase: str
    filter: dict[str, Any]
    settings: dict[str, Any]
    cutoff: datetime
    canary_ids: list[int] | None
    baseline: list[str] | None
    after_id: int
    redriven: int
    verdict: dict[str, Any] | None
    reason: str | None
    audit_id: int | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "updated_at", "finished_at", "cutoff"):
            out[key] = out[key].isoformat() if out[key] else None
        out["canary_size"] = len(self.canary_ids or [])
        del out["canary_ids"]
        return out


def filter_of(op: RedriveOperation) -> DeadEventFilter:
    return DeadEventFilter.from_strings(**op.filter)


class DatabaseBreakers:
    """The delivery controls' breakers (table outbox_breaker, shared by every worker): a
    destination whose breaker is open or half-open pauses a paced redrive until it closes."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    def open_destinations(self, destinations: Iterable[str]) -> set[str]:
        names = sorted(set(destinations))
        if not names:
            return set()
        with self._connect() as conn:
            rows = delivery.breaker_states(conn, names)
        return {row["destination"] for row in rows if row["state"] != "closed"}
