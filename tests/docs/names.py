"""What the documentation names and what the code has: CLI flags, environment variables, metrics.

Both sides are read from their sources, never from a list kept by hand, so a flag, variable or
metric added later is caught by tests/docs/test_names.py until the docs mention it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main

from dispatchbox.cli.main import app
from dispatchbox.observability.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LANGUAGES = ("en", "pl")

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
ENV = re.compile(r"\b(?:DISPATCHBOX_[A-Z0-9_]*[A-Z0-9]|PROMETHEUS_MULTIPROC_DIR|DATABASE_URL)\b")
METRIC = re.compile(r"\bdispatchbox_[a-z0-9_]*[a-z0-9]\b")
# prometheus-client's sample names: a counter is exposed as NAME_total, a histogram as
# NAME_bucket, NAME_sum and NAME_count.
SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")
# Flags of other programs that the docs name beside dispatchbox's own.
FOREIGN_FLAGS = {"--stop-timeout"}  # docker stop


def doc_pages(language: str) -> list[Path]:
    return sorted((DOCS / language).glob("*.md"))


def doc_text(language: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in doc_pages(language))


def cli_flags() -> dict[str, set[str]]:
    """Every long option of every dispatchbox command, by command path."""
    out: dict[str, set[str]] = {}

    # Typer may bring its own copy of Click: recognise options and groups by their shape.
    def walk(command: Any, path: str) -> None:
        out[path] = {
            opt
            for param in command.params
            if param.param_type_name == "option"
            for opt in (*param.opts, *param.secondary_opts)
            if opt.startswith("--")
        }
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "dispatchbox")
    out["dispatchbox"].add("--help")  # Click adds it to every command, outside params
    return out


def bench_flags() -> set[str]:
    """Flags of the benchmark scripts (python -m bench.*), which the performance pages name."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "bench").glob("*.py"))
    flags = set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", text))
    # argparse.BooleanOptionalAction adds --no-NAME beside --NAME.
    return flags | {"--no-" + flag[2:] for flag in flags}


def _sources(*folders: str) -> Iterator[str]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.read_text(encoding="utf-8")


def code_env_vars() -> set[str]:
    """Every environment variable the package reads: any such name in dispatchbox/'s source."""
    return {m for text in _sources("dispatchbox") for m in ENV.findall(text)}


def test_env_vars() -> set[str]:
    """Variables of the test suite and the Makefile (documented for contributors)."""
    texts = [*_sources("tests"), (ROOT / "Makefile").read_text(encoding="utf-8")]
    return {m for text in texts for m in ENV.findall(text)}


def bench_env_vars() -> set[str]:
    """Variables of the benchmarks (python -m bench.*)."""
    return {m for text in _sources("bench") for m in ENV.findall(text)}


def sql_identifiers() -> set[str]:
    """dispatchbox_* names that are not metrics: in sql/ (tables, channels, cursors) and the
    package's own functions and fixtures (``def dispatchbox_server``)."""
    in_sql = {m for path in (ROOT / "sql").rglob("*.sql") for m in METRIC.findall(path.read_text())}
    defined = {
        m for text in _sources("dispatchbox") for m in re.findall(r"def (dispatchbox_\w+)", text)
    }
    return in_sql | defined


def worker_metric_names() -> set[str]:
    # The family names of the counters a worker process keeps (prometheus-client's _name).
    metrics = WorkerMetrics(flush_interval=0)
    found = {str(getattr(value, "_name", "")) for value in vars(metrics).values()}
    return {name for name in found if name.startswith("dispatchbox_")}


def exposed(names: set[str]) -> set[str]:
    """Every sample name a family name can appear under."""
    return {name + suffix for name in names for suffix in SUFFIXES}
