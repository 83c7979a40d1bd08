"""The suite's secrets scan: every secret the suite uses, every output it produced, and a check
at the end of the session that no secret appears in any output.

Secrets: the DSN password every test database is reached with (the session's, distinctive and
random), the API tokens, the Slack bot token and webhook path, the SMTP password, the PagerDuty
routing key and webhook secret of the alert tests, read from those test modules when they ran.

Outputs: every `dispatchbox` command's stdout and stderr (tests.conftest.run_cli), every HTTP
response body of `dispatchbox serve` read through tests.acceptance.test_api.Server's client,
every log record any logger emitted in the test process, and every log, export or report file
the tests left under the session's temporary directory (worker and serve logs, exports).

Not covered: output a test reads through its own subprocess or HTTP client without these
helpers, log records below the level a logger was set to, and pg_cron's or PostgreSQL's own logs.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

# The password in every DSN of the session: trust authentication ignores it, so it reaches every
# client, process and error message exactly as a real one would.
DSN_PASSWORD = "dbxPw-" + secrets.token_hex(12)

# (where, text) of every captured output
OUTPUTS: list[tuple[str, str]] = []
FILE_SUFFIXES = {".log", ".json", ".jsonl", ".csv", ".txt", ".out", ".prom"}

# Module -> names of its secret constants; read at the end, from the modules that were imported.
_MODULE_SECRETS = {
    "tests.acceptance.test_api": ("SECRET", "CI_SECRET"),
    "tests.integration.test_alerts": ("BOT_TOKEN", "SECRET_PATH"),
    "tests.integration.test_alert_channels": ("SMTP_PASSWORD", "ROUTING_KEY", "HOOK_SECRET"),
    "tests.integration.test_alert_secrets": ("TOKEN",),
}


def capture(where: str, text: str | bytes | None) -> None:
    if text:
        OUTPUTS.append((where, text.decode(errors="replace") if isinstance(text, bytes) else text))


def known_secrets() -> dict[str, str]:
    """name -> value of every secret of the modules that ran."""
    found = {"DSN password": DSN_PASSWORD}
    for module_name, names in _MODULE_SECRETS.items():
        module = sys.modules.get(module_name)
        for name in names:
            value = getattr(module, name, None) if module is not None else None
            if isinstance(value, str) and len(value) >= 8:
                found[f"{module_name}.{name}"] = value.strip("/")
    return found


class CaptureHandler(logging.Handler):
    """Every log record that reaches the root logger, formatted with its arguments."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format is still scanned raw
            text = f"{record.msg} {record.args}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        OUTPUTS.append((f"log {record.name}", text))


def files_under(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in FILE_SUFFIXES and path.stat().st_size < 50_000_000:
            capture(str(path.relative_to(root)), path.read_bytes())


def leaks() -> list[str]:
    """'<secret name> in <where>' for every secret found in an output (never the value)."""
    found = []
    for name, value in known_secrets().items():
        for where, text in OUTPUTS:
            if value in text:
                found.append(f"{name} in {where}")
    return found
