"""Every option of every command says what it does in --help; `python -m bench --help` answers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import typer

from dispatchbox.cli.main import app


def _commands(command: Any, path: str = "dispatchbox") -> list[tuple[str, Any]]:
    # Typer vendors its own click, so groups are recognised by their commands, not their class.
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def test_every_option_has_a_help_line() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"dispatchbox worker", "dispatchbox dead-events list"} <= dict(commands).keys()
    missing = [
        f"{path} {param.opts[0]}"
        for path, command in commands
        for param in _options(command)
        if not (param.help or "").strip()
    ]
    assert missing == []


def test_worker_help_names_the_timing_settings_and_their_units() -> None:
    worker = dict(_commands(typer.main.get_command(app)))["dispatchbox worker"]
    helps = {p.opts[0]: p.help or "" for p in _options(worker)}
    for flag in (
        "--lease-seconds",
        "--handler-timeout",
        "--poll-interval",
        "--backoff-base",
        "--backoff-max",
        "--grace-period",
    ):
        assert "seconds" in helps[flag].lower(), flag
    assert "--lease-seconds" in helps["--handler-timeout"]
    assert "--handler-timeout" in helps["--lease-seconds"]


def test_bench_help_prints_its_usage_and_scenarios() -> None:
    for flag in ("--help", "-h"):
        out = subprocess.run(
            [sys.executable, "-m", "bench", flag], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "usage" in out.stdout.lower()
        for scenario in ("drain", "publish", "latency", "failure", "dead_letters"):
            assert scenario in out.stdout


def test_bench_refuses_an_unknown_scenario_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "nosuch"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "nosuch" in out.stderr
