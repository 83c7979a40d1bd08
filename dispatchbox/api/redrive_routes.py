"""HTTP routes of dispatchbox.redrive: the dry-run plan, canary and paced redrive operations,
and the error-group diff. Added to the authenticated /api router by api/app.py; like the other
routes they run in the server's thread pool on the repository's pool.

A canary waits minutes for its sample to settle, longer than an HTTP request should: POST
/api/redrive-operations sends the sample and returns at once; POST .../{id}/run drives it as far
as it goes within ``wait`` seconds (judge, promote) and may be called again until the phase is
completed or stopped. An operation is run by one caller at a time (409 otherwise).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from dispatchbox.api.models import ErrorBody, FilterIn
from dispatchbox.errors import InvalidFilter
from dispatchbox.filters import DeadEventFilter, parse_timestamp
from dispatchbox.redrive import parse_canary
from dispatchbox.redrive.diff import classify_groups
from dispatchbox.repository import OutboxRepository

# The longest look back of /diff, seconds (ten years).
MAX_LOOKBACK = 10 * 365 * 86400.0
# The longest a /run request waits for a canary, and the longest it promotes, seconds (the
# rest: call /run again).
MAX_WAIT = 15.0
RUN_BUDGET = 10.0


_TEXT = {
    400: "Bad filter or parameter",
    401: "Missing or wrong bearer token",
    404: "No such redrive operation",
    409: "Someone else is running this operation",
    422: "Malformed request body or parameter",
    503: "Database unreachable or schema not current",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _TEXT[c]} for c in (400, 401, 422, 503, *codes)}


class RedrivePlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: FilterIn = Field(default_factory=FilterIn)
    max_replays: int | None = Field(default=None, ge=1, le=2**31 - 1)
    rate: float | None = Field(default=None, ge=0.001, le=1e9)
    limit: int | None = Field(default=None, ge=1)


class RedriveOperationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: FilterIn = Field(default_factory=FilterIn)
    canary: str | None = Field(
        default=None, description='A sample first: "1%" or a number of events, e.g. "200".'
    )
    canary_success: float = Field(default=95.0, ge=0, le=100)
    settle_timeout: float = Field(default=300.0, ge=0, le=86400)
    adaptive: bool = False
    rate: float | None = Field(default=None, ge=0.001, le=1e9)
    max_replays: int | None = Field(default=None, ge=1, le=2**31 - 1)


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: float = Field(default=0.0, ge=0, le=MAX_WAIT)


def _flt(body: FilterIn) -> DeadEventFilter:
    try:
        return DeadEventFilter.from_strings(**body.model_dump())
    except (ValueError, OverflowError) as exc:
        raise InvalidFilter(str(exc) or "invalid filter") from None


def add_redrive_routes(api: APIRouter, repo: OutboxRepository, actor: Any, not_found: Any) -> None:
    """``actor`` is the auth dependency (the caller's name); ``not_found(message)`` the 404."""

    @api.post(
        "/dead-events/redrive-plan",
        responses=_errors(),
        summary="Dry-run report of a redrive by filter",
    )
    def redrive_plan(body: RedrivePlanIn) -> dict[str, Any]:
        plan = repo.redrive().plan(
            _flt(body.filter), max_replays=body.max_replays, rate=body.rate, limit=body.limit
        )
        return plan.to_json()

    @api.post(
        "/redrive-operations",
        status_code=201,
        responses=_errors(),
        summary="Start a canary (sample sent now) or paced redrive; drive it with /run",
    )
    def start_operation(body: RedriveOperationIn, who: str = Depends(actor)) -> dict[str, Any]:
        op = repo.redrive().start(
            _flt(body.filter),
            actor=who,
            canary=parse_canary(body.canary) if body.canary is not None else None,
            canary_success=body.canary_success,
            max_replays=body.max_replays,
            rate=body.rate,
            adaptive=body.adaptive,
            settle_timeout=body.settle_timeout,
        )
        return op.to_json()

    @api.get(
        "/redrive-operations",
        responses=_errors(),
        summary="The latest redrive operations, newest first",
    )
    def list_operations(limit: int = Query(20, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [op.to_json() for op in repo.redrive().operations(limit)]

    @api.get("/redrive-operations/{op_id}", responses=_errors(404), summary="One redrive operation")
    def get_operation(op_id: int = Path(ge=1, le=2**63 - 1)) -> dict[str, Any]:
        op = repo.redrive().get(op_id)
        if op is None:
            not_found(f"no redrive operation {op_id}")
        assert op is not None
        return op.to_json()

    @api.post(
        "/redrive-operations/{op_id}/run",
        responses=_errors(404, 409),
        summary="Drive an operation: wait for its canary (up to wait s), judge it, promote",
    )
    def run_operation(body: RunIn, op_id: int = Path(ge=1, le=2**63 - 1)) -> dict[str, Any]:
        service = repo.redrive()
        if service.get(op_id) is None:
            not_found(f"no redrive operation {op_id}")
        return service.run(op_id, wait=body.wait, budget=RUN_BUDGET).to_json()

    @api.get(
        "/dead-events/diff",
        responses=_errors(),
        summary="Error groups new, growing, quiet or resolved since",
    )
    def dead_diff(
        since: str = Query(..., description="ISO 8601, e.g. a deploy's time"),
        lookback: float = Query(7 * 86400.0, ge=0, le=MAX_LOOKBACK),
    ) -> list[dict[str, Any]]:
        moment = parse_timestamp("since", since)
        return [g.to_json() for g in classify_groups(repo.connection, moment, lookback=lookback)]
