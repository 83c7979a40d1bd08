"""Error normalisation: the Python twin of outbox_error_signature / outbox_error_fingerprint.

PostgreSQL computes the fingerprint of every dead event (migration 0003); this module gives the
same answer without a database, so that code holding an error message (a log line, an alert)
can name its group. tests/integration/test_repository.py keeps the two in agreement.

Rules, applied to the first line of the error (at most 500 characters): an exception-type prefix
(``pkg.ErrorType: ``) is kept as is; in the rest, quoted values become ``'?'`` / ``"?"``, UUIDs
``<uuid>``, hex (``0x..`` or 16+ hex digits) ``<hex>``, numbers ``<n>``, blank runs one space.
The patterns use only constructs that PostgreSQL's and Python's regex engines read the same way.
"""

from __future__ import annotations

import hashlib
import re

_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'[^']*'"), "'?'"),
    (re.compile(r'"[^"]*"'), '"?"'),
    (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "<uuid>",
    ),
    (re.compile(r"0[xX][0-9a-fA-F]+"), "<hex>"),
    (re.compile(r"[0-9a-fA-F]{16,}"), "<hex>"),
    (re.compile(r"[0-9]+([.][0-9]+)?"), "<n>"),
    (re.compile(r"[ \t\r\f\v]+"), " "),
)
MAX_LINE = 500
NO_ERROR = "none"


def signature(error: str) -> str:
    """The error with its variable parts masked: what groups in ``stats --by error``."""
    line = error.split("\n", 1)[0][:MAX_LINE]
    match = _PREFIX.match(line)
    prefix = match.group(0) if match else ""
    rest = line[len(prefix) :]
    for pattern, replacement in _MASKS:
        rest = pattern.sub(replacement, rest)
    return (prefix + rest).strip(" ")


def fingerprint(error: str | None) -> str:
    """The 12-hex-digit name of an error's group (``none`` for a dead event without an error)."""
    if error is None:
        return NO_ERROR
    digest = hashlib.md5(signature(error).encode("utf-8"), usedforsecurity=False)
    return digest.hexdigest()[:12]
