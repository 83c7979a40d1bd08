"""The HTTP API's errors: one JSON body ``{"message": ...}`` for every failure, with the status
that says whose move it is (see app.py), and the handlers that turn exceptions into it. A message
never carries a secret: database errors are redacted and a token is never echoed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatchbox import db
from dispatchbox.api.models import ErrorBody
from dispatchbox.errors import (
    DatabaseUnreachable,
    EventNotDead,
    InvalidEventIds,
    InvalidFilter,
    OperationInProgress,
)

logger = logging.getLogger("dispatchbox.api")


class ApiError(Exception):
    """An answer with this status and message (and extra fields, such as the ids at fault)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = ErrorBody(message=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad filter or query parameter"},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorBody, "description": "Database unreachable or schema not current"},
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    extra: dict[int, dict[str, Any]] = {
        404: {"model": ErrorBody, "description": "No event with this id"},
        409: {"model": ErrorBody, "description": "The event (or an id of the batch) is not dead"},
        422: {"model": ErrorBody, "description": "Malformed request body"},
    }
    out = dict(ERRORS)
    for code in codes:
        out[code] = extra[code]
    return out


def reject(missing: list[int], not_dead: list[int]) -> NoReturn:
    error = InvalidEventIds(missing=missing, not_dead=not_dead)
    # 409 when some event is in the wrong state; 404 when the only fault is ids that do not exist.
    raise ApiError(409 if not_dead else 404, str(error), missing=missing, not_dead=not_dead)


def redacted(exc: BaseException, dsn: str) -> str:
    return db.redact(" ".join(str(exc).split()), dsn)[:300]


def install_error_handlers(app: FastAPI, dsn: str) -> None:
    def reply(status: int, message: Callable[[Any], str]) -> Callable[[Request, Any], Any]:
        async def respond(request: Request, exc: Any) -> JSONResponse:
            return error_response(status, message(exc))

        return respond

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, headers=headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "location": [str(p) for p in e.get("loc", ())],
                "message": str(e.get("msg", "")).removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        # A malformed body is 422; a bad query parameter or filter (in the query string or in
        # the body's "filter") is a bad filter: 400.
        in_body = any(
            p["location"][:1] == ["body"] and p["location"][1:2] != ["filter"] for p in problems
        )
        summary = "; ".join(
            f"{'.'.join(p['location'][1:]) or p['location'][0]}: {p['message']}"
            for p in problems[:5]
        )
        return error_response(
            422 if in_body else 400, summary or "invalid request", errors=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(InvalidFilter, reply(400, str))
    app.add_exception_handler(EventNotDead, reply(409, str))
    app.add_exception_handler(OperationInProgress, reply(409, str))
    app.add_exception_handler(DatabaseUnreachable, reply(503, str))
    app.add_exception_handler(
        PoolTimeout, reply(503, lambda exc: "database unavailable: no connection in time")
    )

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        reason = redacted(exc, dsn)
        if isinstance(exc, psycopg.OperationalError):
            return error_response(503, f"database unavailable: {reason}")
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
            return error_response(
                503,
                f"the dispatchbox schema is missing or not current ({reason}); "
                "run `dispatchbox db migrate`",
            )
        logger.error("api_database_error path=%s error=%s", request.url.path, reason)
        return error_response(500, "database error (logged on the server)")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "api_unexpected_error path=%s error=%s",
            request.url.path,
            redacted(exc, dsn),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return error_response(500, "internal error (logged on the server)")
