"""Write the API reference (docs/en/api.md, docs/pl/api.md) from the docstrings of the public names.

Run it with `make api-docs` after changing a public signature or docstring;
tests/docs/test_api_reference.py fails while the committed pages differ from what this prints.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (module, names) in the order the reference shows them; each name's public methods follow it.
SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "dispatchbox",
        "Publishing and handling",
        ["publish", "publish_many", "Dispatcher", "OutboxEvent", "EventStatus", "BackoffPolicy"],
    ),
    ("dispatchbox", "Dead letters", ["OutboxRepository"]),
    ("dispatchbox", "Delivery controls", ["BreakerPolicy"]),
    ("dispatchbox.delivery.config", "Delivery controls: replay", ["is_transient"]),
    (
        "dispatchbox.delivery.backpressure",
        "Backpressure",
        ["set_backlog_limit", "set_cache_seconds"],
    ),
    ("dispatchbox.filters", "Filters", ["DeadEventFilter"]),
    (
        "dispatchbox.destinations",
        "Destinations",
        ["Destination", "Webhook", "RabbitMQ", "NatsJetStream", "RedisStreams", "envelope"],
    ),
    (
        "dispatchbox.errors",
        "Errors",
        [
            "PermanentError",
            "RetryLater",
            "EventExpired",
            "BacklogFullError",
            "BatchFailure",
            "DispatchboxError",
            "ConfigurationError",
            "DatabaseUnreachable",
            "MigrationError",
            "SchemaNotCurrent",
            "InvalidEvent",
            "EventNotFound",
            "EventNotDead",
            "InvalidFilter",
            "InvalidEventIds",
            "InvalidArchiveSettings",
            "PgCronUnavailable",
            "ExportError",
        ],
    ),
    (
        "dispatchbox.testing",
        "Testing (pytest fixtures)",
        [
            "outbox_dsn",
            "outbox_conn",
            "dispatchbox_server",
            "published_events",
            "run_handlers",
            "OutboxServer",
            "start_server",
        ],
    ),
]

HEADER = {
    "en": (
        "# API reference\n\n"
        "Generated from the docstrings by `scripts/api_reference.py` (`make api-docs`); "
        "do not edit by hand. [Polska wersja](../pl/api.md) · [Contents](index.md)\n"
    ),
    "pl": (
        "# Dokumentacja API\n\n"
        "Wygenerowana z docstringów przez `scripts/api_reference.py` (`make api-docs`), więc "
        "po angielsku, jak kod; nie edytuj jej ręcznie. Terminy wyjaśnia "
        "[słowniczek](glossary.md). [English version](../en/api.md) · [Spis treści](index.md)\n"
    ),
}


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else "(no docstring)"


def _annotation(value: Any) -> str:
    # Modules use `from __future__ import annotations`, so annotations are already source text.
    return value if isinstance(value, str) else inspect.formatannotation(value)


def _signature(name: str, obj: Any, *, is_class: bool = False) -> str:
    """The signature as source text, one parameter a line when it would not fit in 90 columns."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    parts: list[str] = []
    star_done = False
    for param in sig.parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if param.kind is param.VAR_POSITIONAL:
            star_done = True
        prefix = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "")
        text = prefix + param.name
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            default = param.default
            # A function default shows as its name, not as a repr with a memory address.
            shown = default.__name__ if inspect.isfunction(default) else repr(default)
            text += f" = {shown}" if param.annotation is not param.empty else f"={shown}"
        parts.append(text)
    returns = ""
    if not is_class and sig.return_annotation is not sig.empty:
        returns = f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(parts)}){returns}"
    if len(one_line) <= 90:
        return one_line
    inner = "".join(f"    {part},\n" for part in parts)
    return f"{name}(\n{inner}){returns}"


def _unwrap(obj: Any) -> Any:
    # pytest fixtures are wrapped; the reference shows the function the user asks for by name.
    return getattr(obj, "__wrapped__", None) or getattr(obj, "_get_wrapped_function", lambda: obj)()


def _members(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, member in cls.__dict__.items():
        if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
            continue
        out.append((name, member))
    return out


def render() -> str:
    lines: list[str] = []
    for module_name, title, names in SECTIONS:
        module = importlib.import_module(module_name)
        lines += [f"## {title}", "", f"Module `{module_name}`.", ""]
        for name in names:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                obj = _unwrap(obj)
            kind = "class" if inspect.isclass(obj) else "function"
            lines += [f"### `{name}`", "", "```python"]
            lines.append(f"{kind} {_signature(name, obj, is_class=kind == 'class')}")
            lines += ["```", "", _doc(obj), ""]
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for member_name, member in _members(obj):
                    if isinstance(member, property):
                        lines += [f"#### `{name}.{member_name}` (property)", "", _doc(member), ""]
                        continue
                    lines += [f"#### `{name}.{member_name}`", "", "```python"]
                    lines += [_signature(member_name, member), "```", "", _doc(member), ""]
    return "\n".join(lines).rstrip() + "\n"


def pages() -> dict[Path, str]:
    body = render()
    return {ROOT / "docs" / lang / "api.md": f"{HEADER[lang]}\n{body}" for lang in ("en", "pl")}


def main() -> int:
    for path, text in pages().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
