"""The worker behind a real PgBouncer in transaction-pooling mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from dispatchbox.tempcluster import free_port
from tests.pg import PgServer, skip_outside_ci
from tests.worker_helpers import WorkerRun, counts, publish, records, wait_until


@pytest.fixture
def pgbouncer_dsn(pg_server: PgServer, db_dsn: str) -> Iterator[str]:
    exe = shutil.which("pgbouncer")
    if exe is None:
        skip_outside_ci("pgbouncer is not installed (`make system` installs it)")
    dbname = conninfo.conninfo_to_dict(db_dsn)["dbname"]
    target = conninfo.conninfo_to_dict(pg_server.tcp_dsn(str(dbname)))
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dispatchbox-pgbouncer-"))
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{dbname} = host={target['host']} port={target['port']} dbname={dbname} "
        f"user={target.get('user', 'postgres')}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir = {workdir}\n"
        "auth_type = any\npool_mode = transaction\n"
        "max_client_conn = 200\ndefault_pool_size = 10\n"
        f"logfile = {workdir}/pgbouncer.log\npidfile = {workdir}/pgbouncer.pid\n"
    )
    cmd = [exe, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(workdir, "postgres", "postgres")
        for f in workdir.iterdir():
            shutil.chown(f, "postgres", "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dsn = f"host=127.0.0.1 port={port} dbname={dbname} user={target.get('user', 'postgres')}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as c:
                    c.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = workdir / "pgbouncer.log"
                    raise RuntimeError(
                        "pgbouncer did not start: "
                        + (log.read_text() if log.exists() else "")
                        + (proc.stderr.read().decode() if proc.stderr else "")
                    ) from None
                time.sleep(0.1)
        yield dsn
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_worker_drains_through_pgbouncer_transaction_mode(
    pgbouncer_dsn: str, tmp_path: Path
) -> None:
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    # Published through PgBouncer as well: publish_many is one statement per batch.
    ids = publish(pgbouncer_dsn, "test.fail_twice", 300, max_attempts=5)
    run = WorkerRun(
        pgbouncer_dsn,
        record_dir,
        "--processes",
        "2",
        "--no-listen",
        "--no-prepared-statements",
        "--poll-interval",
        "0.1",
        "--backoff-base",
        "0.05",
        "--backoff-max",
        "0.1",
        log=tmp_path / "worker.log",
    )
    try:
        wait_until(lambda: counts(pgbouncer_dsn) == {"done": 300}, 90, "300 done via pgbouncer")
    finally:
        assert run.stop() == 0, run.log()
    calls = [r[1] for r in records(record_dir) if r[0] == "call"]
    assert sorted(calls) == sorted(ids * 3), "each event: two failures, then success"
    assert "prepared statement" not in run.log()
    assert "worker_task_failed" not in run.log()


def test_pgbouncer_refuses_the_startup_option_of_synchronous_commit_off(
    pgbouncer_dsn: str,
) -> None:
    # `worker --synchronous-commit off` sends `options=-c synchronous_commit=off` when it
    # connects; docs/*/worker.md (PgBouncer) says this fails there and what to do instead.
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(pgbouncer_dsn, options="-c synchronous_commit=off", connect_timeout=5)
