"""The breakers' routes of the HTTP API: list them, and open, close or reset one (each action in
the audit trail with the token's name as its actor). Mounted by app.py under /api, behind the
same bearer-token authentication as every /api route."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from dispatchbox.api.models import ErrorBody
from dispatchbox.delivery import admin

Action = Literal["open", "close", "reset"]
_ACTIONS: dict[str, Callable[..., None]] = {
    "open": admin.open_breaker,
    "close": admin.close_breaker,
    "reset": admin.reset_breaker,
}


class BreakerOut(BaseModel):
    destination: str
    state: str = Field(description="closed, open or half_open")
    manual: bool = Field(description="Opened by an operator: only an operator closes it.")
    consecutive_failures: int
    window_calls: int
    window_failures: int
    failure_threshold: int
    failure_rate: float | None
    cooldown_seconds: float
    max_cooldown_seconds: float
    reopens: int = Field(description="Failed probes in a row (the cool-down doubles with each).")
    opened_at: datetime | None = Field(description="When the current (or last) outage began.")
    open_until: datetime | None = Field(description="When the next probe is due.")
    closed_at: datetime | None
    changed_at: datetime
    transitions: int
    last_error: str | None
    health_check: bool
    replay_dead: bool
    rate_limit: float | None = Field(description="Events per second, all workers together.")
    burst: float | None


class BreakerActionOut(BaseModel):
    destination: str
    action: Action
    state: str


# The statuses every /api route may answer (see app.py), and this router's own.
_COMMON: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad path parameter"},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorBody, "description": "Database unreachable or schema not current"},
}


def _reply(status: int, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(message=message).model_dump(exclude_none=True), status)


def breaker_router(pool: ConnectionPool[Any], actor: Callable[..., str]) -> APIRouter:
    router = APIRouter(tags=["breakers"])

    @router.get(
        "/breakers",
        response_model=list[BreakerOut],
        responses=_COMMON,
        summary="Every destination's circuit breaker (as `dispatchbox breakers list`)",
    )
    def list_breakers() -> list[BreakerOut]:
        with pool.connection() as conn:
            found = admin.list_breakers(conn)
        return [BreakerOut.model_validate(b.__dict__) for b in found]

    @router.post(
        "/breakers/{name}/{action}",
        response_model=BreakerActionOut,
        responses={
            **_COMMON,
            404: {"model": ErrorBody, "description": "No breaker for this destination"},
            409: {"model": ErrorBody, "description": "The breaker is already in that state"},
        },
        summary="Open, close or reset a breaker (audited with the token's name)",
    )
    def act(
        action: Action,
        name: str = Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$"),
        who: str = Depends(actor),
    ) -> Any:
        try:
            with pool.connection() as conn:
                _ACTIONS[action](conn, name, actor=who)
                state = next(b.state for b in admin.list_breakers(conn) if b.destination == name)
        except admin.BreakerNotFound as exc:
            return _reply(404, str(exc))
        except admin.BreakerStateError as exc:
            return _reply(409, str(exc))
        return BreakerActionOut(destination=name, action=action, state=state)

    return router
