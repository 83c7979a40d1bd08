"""`python -m bench.peers`: a smoke run of dispatchbox and the raw loop (the peers themselves need
npm and PyPI downloads, which the everyday suite must not depend on), the one-line failure when
Node.js is missing, and the peers' versions pinned exactly."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from psycopg import conninfo

from tests.pg import PgServer

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"


@pytest.mark.slow
def test_quick_run_of_dispatchbox_and_the_raw_loop_prints_sane_figures(
    pg_server: PgServer,
) -> None:
    # A password of its own in the DSN (the test server trusts local connections, so it is
    # accepted and ignored): it must appear in none of the bench's output.
    secret = f"pw-{uuid.uuid4().hex}"
    dsn = conninfo.make_conninfo(pg_server.admin_dsn, password=secret)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.peers",
            "--quick",
            "--systems",
            "dispatchbox-sync,dispatchbox-async,raw",
        ],
        cwd=ROOT,
        env={**os.environ, "DISPATCHBOX_BENCH_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # the table: a header and one line per system
    assert re.search(r"^system\s+events\s+median events/s\s+spread", result.stdout, re.M)
    for name in ("dispatchbox-sync", "dispatchbox-async", "raw SQL loop"):
        assert re.search(rf"^{name}\s+2,000\s", result.stdout, re.M), result.stdout
    json_line = next(ln for ln in result.stdout.splitlines() if ln.startswith("JSON "))
    summary = json.loads(json_line[5:])
    assert summary["bench"] == "peers"
    rows = {r["system"]: r for r in summary["rows"]}
    assert set(rows) == {"dispatchbox-sync", "dispatchbox-async", "raw SQL loop"}
    for row in rows.values():
        assert row["events"] == 2000
        assert row["exactly_once"] is True
        # 2,000 events take more than a millisecond and less than the run's timeout
        assert math.isfinite(row["events_per_s"]) and 10 < row["events_per_s"] < 2_000_000
    assert 0 < rows["dispatchbox-async"]["vs_dispatchbox_sync"] < 10
    assert 0 < rows["raw SQL loop"]["vs_dispatchbox_sync"] < 1000
    for name in ("dispatchbox-sync", "dispatchbox-async"):
        assert 0 < rows[name]["dispatchbox_vs_raw"] < 10
        assert "--processes 2 --batch-size 1000" in rows[name]["settings"]
    assert secret not in result.stdout + result.stderr


def test_a_node_peer_without_node_fails_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--quick", "--systems", "graphile-worker"],
        cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path), "DISPATCHBOX_PEERS_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "python -m bench peers: node not found: the Node.js peers need Node.js 20 and npm on PATH"
    ]


def test_an_unknown_system_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--systems", "nosuch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown system(s): nosuch" in result.stderr


def test_the_peers_are_pinned_exactly() -> None:
    package = json.loads((PEERS / "package.json").read_text())
    lock = json.loads((PEERS / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    requirements = [
        ln
        for ln in (PEERS / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    names = {ln.split("==")[0].lower() for ln in requirements}
    assert {"pgqueuer", "procrastinate"} <= names
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^ ]*", ln) for ln in requirements)
