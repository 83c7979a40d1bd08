"""The real `dispatchbox` command: db, publish, configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import psycopg
import pytest

from dispatchbox.tempcluster import free_port
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_db_check_migrate_status(empty_db_dsn: str) -> None:
    before = run_cli("db", "check", dsn=empty_db_dsn)
    assert before.code == 1
    assert "missing 0001_initial" in before.stdout
    assert before.stderr.strip().count("\n") == 0

    dry = run_cli("db", "migrate", "--dry-run", dsn=empty_db_dsn)
    assert dry.code == 0 and "would apply 0001_initial" in dry.stdout
    assert run_cli("db", "check", dsn=empty_db_dsn).code == 1

    done = run_cli("db", "migrate", dsn=empty_db_dsn)
    assert done.code == 0 and "applied 0001_initial" in done.stdout
    again = run_cli("db", "migrate", dsn=empty_db_dsn)
    assert again.code == 0 and "nothing to apply" in again.stdout

    assert run_cli("db", "check", dsn=empty_db_dsn).code == 0
    status = run_cli("db", "status", dsn=empty_db_dsn)
    assert status.code == 0
    assert "applied  0001_initial" in status.stdout
    assert "oldest_pending_age_seconds" in status.stdout


def test_publish_command_and_bad_json(db_dsn: str) -> None:
    ok = run_cli(
        "publish",
        "--aggregate-type",
        "order",
        "--aggregate-id",
        "7",
        "--event-type",
        "order.created",
        "--payload",
        '{"a": 1}',
        dsn=db_dsn,
    )
    assert ok.code == 0, ok.stderr
    event_id = int(ok.stdout.strip())
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT payload FROM outbox_event WHERE id = %s", [event_id]).fetchone()
    assert row == ({"a": 1},)

    bad = run_cli(
        "publish",
        "--aggregate-type",
        "order",
        "--aggregate-id",
        "7",
        "--event-type",
        "order.created",
        "--payload",
        "{not json",
        dsn=db_dsn,
    )
    assert bad.code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "--payload is not valid JSON" in lines[0]

    empty = run_cli(
        "publish",
        "--aggregate-type",
        "order",
        "--aggregate-id",
        "7",
        "--event-type",
        "",
        "--payload",
        "{}",
        dsn=db_dsn,
    )
    assert empty.code == 2 and "event_type must not be empty" in empty.stderr
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_event").fetchone() == (1,)


def test_unreachable_database_gives_one_line_without_password() -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://alice:hunter2secret@127.0.0.1:{port}/orders"
    result = run_cli("db", "status", dsn=dsn)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"host 127.0.0.1 port {port} database orders" in lines[0]
    assert "hunter2secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_dsn_flag_beats_environment(db_dsn: str) -> None:
    port = free_port()
    result = run_cli(
        "--dsn", f"postgresql://u:pw@127.0.0.1:{port}/nowhere", "db", "check", dsn=db_dsn
    )
    assert result.code == 1 and f"port {port} database nowhere" in result.stderr
    via_url = run_cli("db", "check", env={"DATABASE_URL": db_dsn})
    assert via_url.code == 0
    missing = run_cli("db", "check")
    assert missing.code == 2 and "no database configured" in missing.stderr


@pytest.mark.slow
def test_installed_wheel_migrates_without_a_checkout(empty_db_dsn: str, tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("dispatchbox-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next(env_dir.glob("lib/python*/site-packages"))
    # Dependencies come from the test environment (no network needed); dispatchbox itself
    # comes from the wheel, which sits first on the new environment's path.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DISPATCHBOX_DSN"] = empty_db_dsn
    where = subprocess.run(
        [python, "-c", "import dispatchbox.data.queries as q; print(q.sql_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout
    result = subprocess.run(
        [python, "-m", "dispatchbox", "db", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "applied 0001_initial" in result.stdout
