"""Every exception dispatchbox raises on purpose, each with the exit code the CLI maps it to."""

from __future__ import annotations

from collections.abc import Mapping


class DispatchboxError(Exception):
    """Base class of dispatchbox's own errors."""

    exit_code = 1


class ConfigurationError(DispatchboxError):
    """A setting is missing or invalid."""

    exit_code = 2


class DatabaseUnreachable(DispatchboxError):
    """PostgreSQL could not be reached; the message names host, port and database only."""


class MigrationError(DispatchboxError):
    """A migration file is malformed or failed to apply."""


class SchemaNotCurrent(DispatchboxError):
    """The database lacks migrations that this version of dispatchbox needs."""


class InvalidEvent(DispatchboxError, ValueError):
    """An event passed to publish or publish_many is malformed; nothing was written."""

    exit_code = 2


class EventNotFound(DispatchboxError, LookupError):
    """No event has this id."""


class EventNotDead(DispatchboxError, ValueError):
    """The event exists but is not dead, so it cannot be retried."""


class PermanentError(Exception):
    """Raised by a handler: this event can never succeed, dead-letter it without more retries."""


class RetryLater(Exception):
    """Raised by a handler: this attempt failed, try again after ``retry_after`` seconds (e.g. a
    server's Retry-After) instead of the backoff; None means the backoff decides.

    >>> raise RetryLater("rate limited", retry_after=30)
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None and not retry_after >= 0:
            raise ValueError("retry_after must be a number of seconds, at least 0")
        self.retry_after = retry_after


class EventExpired(PermanentError):
    """The event's expires_at or its handler's ttl passed before delivery: dead, never run."""

    # What the event's last_error starts with ("expired: ..."), rather than the class name.
    error_type = "expired"


class BacklogFullError(DispatchboxError):
    """publish refused the event: the pending backlog of its event type is above its limit."""


class BatchFailure(Exception):
    """Raised by a batch handler: these events of the batch failed, each with its own error
    (a PermanentError dead-letters its event at once); every other event of the batch is done.

    >>> raise BatchFailure({event.id: ConnectionError("broker refused it")})
    """

    def __init__(self, failures: Mapping[int, BaseException]) -> None:
        checked = dict(failures)
        for event_id, error in checked.items():
            if type(event_id) is not int or not isinstance(error, BaseException):
                raise TypeError("BatchFailure takes a mapping of event id (int) to an exception")
        super().__init__(f"{len(checked)} event(s) of the batch failed")
        self.failures = checked


class InvalidArchiveSettings(DispatchboxError, ValueError):
    """A retention, batch size or cron expression for archival is invalid."""

    exit_code = 2


class PartitionError(DispatchboxError):
    """The outbox cannot be partitioned as asked; the message says why and what to do."""


class PgCronUnavailable(DispatchboxError):
    """pg_cron is not installed, not preloaded, or its extension is not created; says how to fix."""


# -- dead-letter lifecycle (issue 4) -------------------------------------------------------------


class InvalidFilter(DispatchboxError, ValueError):
    """A dead-event filter is malformed (bad date, empty text, unknown fingerprint form)."""

    exit_code = 2


class InvalidEventIds(DispatchboxError, ValueError):
    """A batch names events that are missing or not dead; nothing was retried."""

    def __init__(self, *, missing: list[int], not_dead: list[int]) -> None:
        self.missing = missing
        self.not_dead = not_dead
        parts = []
        if missing:
            parts.append(f"no such event: {_ids(missing)}")
        if not_dead:
            parts.append(f"not dead: {_ids(not_dead)}")
        super().__init__("; ".join(parts) + "; nothing was retried")


class ExportError(DispatchboxError):
    """An export could not be written (output path, format); nothing was exported."""


def _ids(ids: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


class OperationInProgress(DispatchboxError):
    """Another process is running this redrive operation now."""


class QueryCardinalityError(DispatchboxError):
    """A named query was run by a function of another cardinality, or a ``:one`` query returned
    more than one row."""
