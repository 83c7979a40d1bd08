"""Request and response bodies of the HTTP API, as published in /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

MAX_BIGINT = 2**63 - 1
MAX_BATCH_IDS = 10_000

EventId = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
# Forms of the filter values, for the OpenAPI document only: DeadEventFilter checks them and
# says what is wrong in words (400), better than a pattern mismatch would.
ISO_SCHEMA: dict[str, Any] = {"pattern": r"^\s*\d{4}-\d{2}-\d{2}([T ].*)?$"}
TEXT_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": 1000, "pattern": r"\S"}
FINGERPRINT_SCHEMA: dict[str, Any] = {"pattern": "^([0-9a-f]{12}|none)$"}


class ErrorBody(BaseModel):
    """Every error: a message a person can act on; for a rejected batch, the ids at fault."""

    message: str
    missing: list[int] | None = None
    not_dead: list[int] | None = None
    errors: list[dict[str, Any]] | None = None


class DeadEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    headers: Any  # a JSON object when written by publish(); any JSON when written by hand
    status: str
    attempts: int
    max_attempts: int
    priority: int
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    dead_at: datetime | None
    redrive_count: int
    last_redriven_at: datetime | None
    last_redriven_by: str | None
    error_fingerprint: str | None
    destination: str | None = Field(
        default=None, description="The destination whose delivery failed last (null: none)."
    )


class DeadEventPage(BaseModel):
    items: list[DeadEventOut]
    total: int = Field(description="Dead events matching the filters, on every page.")
    limit: int
    offset: int
    next_after_id: int | None = Field(
        description="Pass as after_id for the next page (keyset, fast); null on the last page."
    )


class ErrorRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    attempt: int
    worker: str | None
    started_at: datetime | None
    finished_at: datetime
    error_type: str
    message: str
    traceback: str | None


class EventDetailOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    headers: Any  # a JSON object when written by publish(); any JSON when written by hand
    status: str
    attempts: int
    max_attempts: int
    priority: int
    idempotency_key: str | None
    next_attempt_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime
    done_at: datetime | None
    dead_at: datetime | None
    redrive_count: int
    last_redriven_at: datetime | None
    last_redriven_by: str | None
    error_fingerprint: str | None
    destination: str | None = Field(
        default=None, description="The destination whose delivery failed last (null: none)."
    )
    errors: list[ErrorRecordOut] = Field(description="Every failed attempt, oldest first.")


class GroupStatOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str | None = Field(description="The group's value; null: no destination recorded.")
    count: int
    first_seen: datetime | None
    last_seen: datetime | None


class ErrorGroupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    fingerprint: str
    signature: str | None
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    example_id: int
    example_error: str | None


class StatsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    total: int
    oldest_dead_at: datetime | None
    newest_dead_at: datetime | None
    by_event_type: list[GroupStatOut] | None = None
    by_aggregate_type: list[GroupStatOut] | None = None
    by_error: list[ErrorGroupOut] | None = None
    by_destination: list[GroupStatOut] | None = None


class RetryOut(BaseModel):
    id: int
    status: str = Field(description="Always pending: the event will be dispatched again.")


class FilterIn(BaseModel):
    """Which dead events, as the CLI's filter flags; an empty object means every dead event."""

    model_config = ConfigDict(extra="forbid")

    event_type: str | None = Field(default=None, json_schema_extra=TEXT_SCHEMA)
    aggregate_type: str | None = Field(default=None, json_schema_extra=TEXT_SCHEMA)
    since: str | None = Field(
        default=None, description="Died at or after (ISO 8601).", json_schema_extra=ISO_SCHEMA
    )
    until: str | None = Field(
        default=None, description="Died before (ISO 8601).", json_schema_extra=ISO_SCHEMA
    )
    error_contains: str | None = Field(
        default=None,
        description="last_error contains this, ignoring case.",
        json_schema_extra=TEXT_SCHEMA,
    )
    error_fingerprint: str | None = Field(
        default=None,
        description="An error group, as GET /api/dead-events/stats?by=error names it.",
        json_schema_extra=FINGERPRINT_SCHEMA,
    )
    destination: str | None = Field(
        default=None,
        description="Only events whose delivery to this destination failed.",
        json_schema_extra=TEXT_SCHEMA,
    )


class RetryBatchIn(BaseModel):
    """Either ``ids`` (all must be dead, or nothing is retried) or ``filter``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["ids"]}, {"required": ["filter"]}]},
    )

    ids: (
        Annotated[list[EventId], Field(min_length=1, max_length=MAX_BATCH_IDS)]
        | SkipJsonSchema[None]
    ) = None
    filter: FilterIn | SkipJsonSchema[None] = None
    limit: int | None = Field(
        default=None, ge=1, le=MAX_BIGINT, description="With filter: redrive at most this many."
    )
    skip_invalid: bool = Field(
        default=False, description="With ids: retry the dead ones, skip missing or not dead ids."
    )
    dry_run: bool = Field(default=False, description="Say what would be retried; change nothing.")

    @model_validator(mode="after")
    def _one_selection(self) -> RetryBatchIn:
        if (self.ids is None) == (self.filter is None):
            raise ValueError('give exactly one of "ids" or "filter"')
        if self.ids is not None and self.limit is not None:
            raise ValueError('"limit" applies to "filter", not to "ids"')
        if self.filter is not None and self.skip_invalid:
            raise ValueError('"skip_invalid" applies to "ids", not to "filter"')
        return self


class RetryBatchOut(BaseModel):
    retried: int = Field(description="Events made pending (0 on a dry run).")
    dry_run: bool
    would_retry: int | None = Field(default=None, description="On a dry run: how many would be.")
    missing: list[int] = Field(default_factory=list, description="Ids that do not exist.")
    not_dead: list[int] = Field(default_factory=list, description="Ids that are not dead.")
    conflicts: dict[str, Any] | None = Field(
        default=None,
        description="On a dry run by filter: what the redrive would run into, as the redrive "
        "plan reports it (aggregate_moved_on, idempotency_key_taken, behind_dead_event: each "
        "a count and the first ids).",
    )
