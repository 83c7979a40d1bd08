"""DeadEventFilter: which dead events an operator means, validated once for the CLI and the API.

Every field narrows the selection; an empty filter means every dead event. ``since`` and
``until`` bound ``dead_at`` (since inclusive, until exclusive) and must be timezone-aware;
``error_contains`` matches ``last_error`` case-insensitively as plain text (``%`` and ``_`` are
literal); ``error_fingerprint`` is a group of ``dead-events stats --by error``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any

from dispatchbox.errors import InvalidFilter

_FINGERPRINT = re.compile(r"^(?:[0-9a-f]{12}|none)$")
_MAX_TEXT = 1000


def _check_text(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidFilter(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidFilter(f"{name} must not be empty")
    if len(value) > _MAX_TEXT:
        raise InvalidFilter(f"{name} is longer than {_MAX_TEXT} characters")
    if "\x00" in value:
        raise InvalidFilter(f"{name} must not contain NUL characters")


def _check_time(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise InvalidFilter(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidFilter(f"{name} must be timezone-aware")


def _like_pattern(text: str) -> str:
    # ILIKE with the default escape character: the operator's text is matched literally.
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class DeadEventFilter:
    """Which dead events: by type, destination, time of death and error. All fields
    optional."""

    event_type: str | None = None
    aggregate_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_contains: str | None = None
    error_fingerprint: str | None = None
    # The destination whose delivery failed (outbox_event.destination, migration 0007).
    destination: str | None = None

    def __post_init__(self) -> None:
        _check_text("event_type", self.event_type)
        _check_text("destination", self.destination)
        _check_text("aggregate_type", self.aggregate_type)
        _check_text("error_contains", self.error_contains)
        _check_time("since", self.since)
        _check_time("until", self.until)
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidFilter("since must be earlier than until")
        if self.error_fingerprint is not None and (
            not isinstance(self.error_fingerprint, str)
            or not _FINGERPRINT.match(self.error_fingerprint)
        ):
            raise InvalidFilter(
                "error_fingerprint must be 12 lowercase hex digits, as `stats --by error` shows"
            )

    @classmethod
    def from_strings(
        cls,
        *,
        event_type: str | None = None,
        aggregate_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        error_contains: str | None = None,
        error_fingerprint: str | None = None,
        destination: str | None = None,
    ) -> DeadEventFilter:
        """Build from text as typed on a command line or in a query string."""
        return cls(
            event_type=event_type,
            aggregate_type=aggregate_type,
            since=parse_timestamp("since", since) if since is not None else None,
            until=parse_timestamp("until", until) if until is not None else None,
            error_contains=error_contains,
            error_fingerprint=error_fingerprint.strip().lower()
            if error_fingerprint is not None
            else None,
            destination=destination,
        )

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    @property
    def summary_serves(self) -> bool:
        """Whether the dead-letter summary (migration 0012) answers counts and groups for this
        filter: it keeps dead events per event type, aggregate type, destination and error
        fingerprint, not their time of death or error text."""
        return self.since is None and self.until is None and self.error_contains is None

    def params(self) -> dict[str, Any]:
        """The named parameters of the filter block in sql/queries/dead_letters.sql."""
        return {
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "since": self.since,
            "until": self.until,
            "error_like": _like_pattern(self.error_contains)
            if self.error_contains is not None
            else None,
            "error_fingerprint": self.error_fingerprint,
            "destination": self.destination,
            # the SQL functions of migration 0005 take the text and build the pattern themselves
            "error_contains": self.error_contains,
        }

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values (the audit trail stores this)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def parse_timestamp(name: str, text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is local time (as `publish` reads it)."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            parsed = datetime.combine(date.fromisoformat(raw), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(raw)
        # astimezone() on a naive datetime attaches the local zone (keeping the wall time); at
        # the edges of the calendar (0001-01-01, 9999-12-31) that can overflow.
        return parsed.astimezone() if parsed.tzinfo is None else parsed
    except (ValueError, OverflowError):
        raise InvalidFilter(
            f"{name}: {text!r} is not an ISO 8601 date or time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
