"""Request and response bodies of the HTTP API, as published in /openapi.json."""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from dispatchbox import records

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


def _swap(tp: Any, models: dict[Any, type[BaseModel]]) -> Any:
    """tp with each nested record type replaced by its model: list[GroupStat] | None ->
    list[GroupStatOut] | None."""
    if tp in models:
        return models[tp]
    args = get_args(tp)
    if not args:
        return tp
    swapped = tuple(_swap(arg, models) for arg in args)
    if get_origin(tp) in (Union, types.UnionType):
        return functools.reduce(operator.or_, swapped)
    return types.GenericAlias(get_origin(tp), swapped)


def _from_record(
    record: type[Any],
    name: str,
    *,
    nested: dict[Any, type[BaseModel]] | None = None,
    described: dict[str, str] | None = None,
) -> type[BaseModel]:
    """A response model with the record's fields, in its order, with its types and defaults;
    ``nested`` gives the model of each record a field holds, ``described`` a field's
    description in the OpenAPI document."""
    hints = get_type_hints(record)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        tp = _swap(hints[f.name], nested or {})
        text = (described or {}).get(f.name)
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (tp, Field(default=f.default, description=text))
        elif f.default_factory is not dataclasses.MISSING and text is None:
            fields[f.name] = (tp, Field(default_factory=f.default_factory))
        else:  # required (a described list, such as errors, is always sent)
            fields[f.name] = (tp, Field(description=text))
    model: type[BaseModel] = create_model(
        name, __config__=ConfigDict(from_attributes=True), **fields
    )
    return model


_DESTINATION = {"destination": "The destination whose delivery failed last (null: none)."}

# Response bodies: the records OutboxRepository returns (dispatchbox.records), field for field.
DeadEventOut = _from_record(records.DeadEvent, "DeadEventOut", described=_DESTINATION)
ErrorRecordOut = _from_record(records.ErrorRecord, "ErrorRecordOut")
EventDetailOut = _from_record(
    records.EventDetail,
    "EventDetailOut",
    nested={records.ErrorRecord: ErrorRecordOut},
    described={**_DESTINATION, "errors": "Every failed attempt, oldest first."},
)
GroupStatOut = _from_record(
    records.GroupStat,
    "GroupStatOut",
    described={"key": "The group's value; null: no destination recorded."},
)
ErrorGroupOut = _from_record(records.ErrorGroup, "ErrorGroupOut")
StatsOut = _from_record(
    records.DeadEventStats,
    "StatsOut",
    nested={records.GroupStat: GroupStatOut, records.ErrorGroup: ErrorGroupOut},
)
_PAGE_ITEMS: Any = types.GenericAlias(list, (DeadEventOut,))
DeadEventPage: type[BaseModel] = create_model(
    "DeadEventPage",
    items=(_PAGE_ITEMS, ...),
    total=(int, Field(description="Dead events matching the filters, on every page.")),
    limit=(int, ...),
    offset=(int, ...),
    next_after_id=(
        int | None,
        Field(
            description="Pass as after_id for the next page (keyset, fast); null on the last page."
        ),
    ),
)


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
