"""`dispatchbox serve`: the HTTP API, /metrics, /healthz and /readyz (uvicorn)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import typer

from dispatchbox import redaction
from dispatchbox.api.auth import TOKEN_ENV, ApiTokens
from dispatchbox.cli.common import fail, state, usage_error
from dispatchbox.db import describe
from dispatchbox.logging_setup import configure_logging
from dispatchbox.observability import alerting as alerts

logger = logging.getLogger("dispatchbox.api")

_BANNER = """\
##########################################################################
#  WARNING: dispatchbox serve is running WITHOUT AUTHENTICATION          #
#  (--insecure-no-auth). Anyone who can reach {address:<26}#
#  can list, read and retry dead events. Set DISPATCHBOX_API_TOKEN.      #
##########################################################################"""


def serve_command(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", "--host", envvar="DISPATCHBOX_API_HOST", help="Address to listen on."
    ),
    port: int = typer.Option(
        8000, "--port", envvar="DISPATCHBOX_API_PORT", min=1, max=65535, help="Port."
    ),
    insecure_no_auth: bool = typer.Option(
        False,
        "--insecure-no-auth",
        help=f"Serve /api without a token (only when {TOKEN_ENV} is unset). Never in production.",
    ),
    log_level: str = typer.Option(
        "INFO",
        "--log-level",
        envvar="DISPATCHBOX_LOG_LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    ),
) -> None:
    """Serve the HTTP API: /api/dead-events..., /metrics, /healthz, /readyz, /openapi.json."""
    dsn = state(ctx).dsn()
    describe(dsn)  # a malformed DSN fails here, in one line
    raw = os.environ.get(TOKEN_ENV, "")
    if raw.strip() and insecure_no_auth:
        usage_error(f"--insecure-no-auth and {TOKEN_ENV} contradict each other; drop one")
    if not raw.strip() and not insecure_no_auth:
        usage_error(
            f"{TOKEN_ENV} is not set: every /api route needs a bearer token. Set it (for "
            "example `export DISPATCHBOX_API_TOKEN=ops:$(openssl rand -hex 24)`), or pass "
            "--insecure-no-auth on a trusted machine"
        )
    tokens = ApiTokens.parse(raw) if raw.strip() else None
    alerting = alerts.check_env()
    redaction.configured()  # a malformed DISPATCHBOX_REDACT stops serve here, in one line
    # fastapi and uvicorn come with the `api` extra: a worker-only install does without them.
    try:
        import jinja2  # noqa: F401 - the console's templates (/ui)
        import uvicorn
        from fastapi import FastAPI
        from psycopg_pool import ConnectionPool

        from dispatchbox import console
        from dispatchbox.api.app import ApiSettings, create_app
        from dispatchbox.console.breaker_source import DeliveryBreakers
    except ImportError as exc:
        fail(
            f"dispatchbox serve needs the api extra ({exc.name or 'fastapi'} is not installed): "
            "pip install 'dispatchbox[api]'"
        )

    level = log_level.upper()
    configure_logging(level)
    if tokens is None:
        print(_BANNER.format(address=f"{host}:{port}"), file=sys.stderr, flush=True)
        logger.warning("api_insecure_no_auth address=%s:%d", host, port)
    else:
        weak = tokens.weak()
        if weak:
            logger.warning(
                "api_weak_token names=%s (shorter than 16 characters: use a long random secret)",
                ",".join(weak),
            )
    logger.info(
        "api_starting address=http://%s:%d database=%s tokens=%s",
        host,
        port,
        describe(dsn),
        ",".join(t.name for t in tokens.tokens) if tokens else "NONE",
    )
    if alerting:
        logging.getLogger("dispatchbox.alerts").info("%s", alerting)

    def add_console(app: FastAPI, pool: ConnectionPool[Any]) -> None:
        """The dead-letter console (/ui), on the API's pool and tokens."""
        console.mount(app, pool, tokens, breakers=DeliveryBreakers(pool))

    app = create_app(ApiSettings(dsn=dsn, tokens=tokens), mount=add_console)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler
    # that was there before it: with this one, a stopped server exits 0, like the worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # log_config=None: uvicorn's loggers go through the same root handler as ours.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=level.lower(),
        server_header=False,
    )
    logger.info("api_stopped")
