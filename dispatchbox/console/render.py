"""Jinja2 templates of the console, with the filters its pages share and the deaths chart.

Templates autoescape everything: an event's payload, error or header is shown as text, never as
markup. The chart is a small inline SVG built here from the hourly counts, so the page needs no
chart library and no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).resolve().parent
CHART_WIDTH = 720
CHART_HEIGHT = 140


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str


def bars(deaths: list[tuple[datetime, int]], hours: int, now: datetime) -> list[Bar]:
    """One bar an hour for the last ``hours`` hours, the newest on the right."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    counts = {
        bucket.astimezone(UTC).replace(minute=0, second=0, microsecond=0): n for bucket, n in deaths
    }
    top = max(counts.values(), default=0) or 1
    slot = CHART_WIDTH / hours
    out = []
    for i in range(hours):
        hour = end.timestamp() - (hours - 1 - i) * 3600
        start = datetime.fromtimestamp(hour, UTC)
        n = counts.get(start, 0)
        height = (CHART_HEIGHT - 20) * n / top
        out.append(
            Bar(
                x=round(i * slot + 1, 1),
                y=round(CHART_HEIGHT - 16 - height, 1),
                width=round(slot - 2, 1),
                height=round(height, 1),
                count=n,
                label=start.strftime("%H:00"),
            )
        )
    return out


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second (operators compare it with logs)."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration as the largest two units: 3 d 4 h, 2 h 5 min, 42 s."""
    if not seconds or seconds < 0:
        return "0 s"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {s} s"
    return f"{s} s"


def pretty(value: Any) -> str:
    """JSON indented for reading, non-ASCII kept as typed."""
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["age"] = age
    env.filters["pretty"] = pretty
    env.globals["chart_width"] = CHART_WIDTH
    env.globals["chart_height"] = CHART_HEIGHT
    return env
