"""The dead-letter console at /ui of `dispatchbox serve`: pages, templates and static assets.

Owns: the server-rendered pages (Jinja2 templates in templates/), the plain JavaScript and CSS it
serves itself from static/ (no build step, no CDN: it works without internet), sign-in sessions,
CSRF tokens, the English and Polish texts, and the console's named queries
(sql/queries/console.sql).

Layer: entry points (docs/en/architecture.md). May import only downward:
dispatchbox.repository, delivery (breakers, checksums), records, filters, dispatchbox.data (through
store.py), and the API's token check (dispatchbox.api.auth). Never the worker or the CLI.

``mount(app, pool, tokens)`` adds it to the API's FastAPI app (``dispatchbox serve`` passes it to
``create_app(mount=...)``: the API does not import the console); web.py builds the app, pages.py
serves the pages, actions.py the forms, store.py reads and acts through OutboxRepository.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from psycopg_pool import ConnectionPool

from dispatchbox.api.auth import ApiTokens
from dispatchbox.console.session import READERS_ENV, Signer, parse_readers
from dispatchbox.console.store import BreakerSource, ConsoleStore
from dispatchbox.console.web import PREFIX, create_console

__all__ = ["PREFIX", "BreakerSource", "ConsoleStore", "create_console", "mount"]


def mount(
    app: FastAPI,
    pool: ConnectionPool[Any],
    tokens: ApiTokens | None,
    *,
    readers: frozenset[str] | None = None,
    breakers: BreakerSource | None = None,
) -> None:
    """Serve the console at /ui of ``app`` on the API's pool. Without tokens (serve
    --insecure-no-auth) the console only says it needs them: it never runs unauthenticated."""
    who_reads = parse_readers(os.environ.get(READERS_ENV)) if readers is None else readers
    signer = Signer(tokens, who_reads) if tokens is not None else None
    app.mount(PREFIX, create_console(ConsoleStore(pool, breakers=breakers), signer))
