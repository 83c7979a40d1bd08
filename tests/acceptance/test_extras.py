"""The extras mean something: the core installs what a worker host needs, `api` adds the HTTP
server. A worker-only install is simulated by making fastapi, uvicorn and starlette unimportable
in a real `dispatchbox` subprocess: everything but `serve` works, and `serve` says in one line
which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ("fastapi", "uvicorn", "starlette")


def run_without_web(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"for name in {WEB!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as if not installed\n"
        f"sys.argv = ['dispatchbox', *{list(args)!r}]\n"
        "from dispatchbox.cli.main import run\n"
        "run()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHBOX_")}
    env["DISPATCHBOX_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_core_dependencies_leave_the_web_server_to_the_api_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "fastapi" not in core and "uvicorn" not in core
    assert any(d.startswith("fastapi") for d in project["optional-dependencies"]["api"])
    assert any(d.startswith("uvicorn") for d in project["optional-dependencies"]["api"])
    dev = project["optional-dependencies"]["dev"]
    itself = [d for d in dev if d.startswith("dispatchbox[")]
    assert len(itself) == 1
    # dev is every extra: the API and the broker clients of the built-in destinations.
    assert set(itself[0][len("dispatchbox[") : -1].split(",")) == {
        "api",
        "rabbitmq",
        "nats",
        "redis",
    }
    for extra in ("rabbitmq", "nats", "redis"):
        assert project["optional-dependencies"][extra]
    assert any(d.startswith("testcontainers") for d in dev)


def test_a_worker_only_install_migrates_and_lists_and_serve_names_the_extra(
    empty_db_dsn: str,
) -> None:
    migrate = run_without_web(empty_db_dsn, "db", "migrate")
    assert migrate.returncode == 0, migrate.stderr
    listed = run_without_web(empty_db_dsn, "dead-events", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"
    serve = run_without_web(empty_db_dsn, "serve", "--insecure-no-auth")
    assert serve.returncode == 1
    assert serve.stderr.strip().splitlines() == [
        "dispatchbox: error: dispatchbox serve needs the api extra (uvicorn is not installed): "
        "pip install 'dispatchbox[api]'"
    ]
