"""A throwaway PostgreSQL cluster from the local binaries: for the demo, the tests and bench.

initdb and pg_ctl refuse to run as root, so as root they run as the ``postgres`` user on a
directory that user owns. The cluster listens on a free TCP port on 127.0.0.1 and on a unix
socket in its own directory, runs without fsync (it holds nothing worth keeping) and preloads
pg_cron when the extension is installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from dispatchbox.errors import ConfigurationError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path | None:
    """The bin folder of the newest local PostgreSQL server install, or None."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class TempCluster:
    """initdb + pg_ctl in a temp dir; ``stop()`` removes everything."""

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        fsync: bool = False,
        listen_addresses: str = "127.0.0.1",
    ) -> None:
        """``listen_addresses`` as in postgresql.conf; whatever it says, pg_hba.conf lets only
        loopback clients in until a caller adds lines (tests/netns.py does, for its veths)."""
        found = bindir or find_bindir()
        if found is None:
            raise ConfigurationError(
                "no local PostgreSQL server binaries (initdb) found; install postgresql "
                "or set DISPATCHBOX_DSN"
            )
        self.bindir = found
        self.fsync = fsync
        self.listen_addresses = listen_addresses
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dispatchbox-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self.pg_cron = self._pg_cron_installed()
        self.running = False

    # -- facts ---------------------------------------------------------------------------------

    def _pg_config(self, flag: str) -> str | None:
        exe = self.bindir / "pg_config"
        if not exe.exists():
            return None
        out = subprocess.run([str(exe), flag], capture_output=True, text=True, check=False)
        return out.stdout.strip() or None

    def _pg_cron_installed(self) -> bool:
        libdir = self._pg_config("--pkglibdir") or str(self.bindir.parent / "lib")
        sharedir = self._pg_config("--sharedir")
        has_lib = Path(libdir, "pg_cron.so").exists()
        has_control = sharedir is None or Path(sharedir, "extension", "pg_cron.control").exists()
        return has_lib and has_control

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def tcp_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    # -- lifecycle -----------------------------------------------------------------------------

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log[-2000:]}"
            )

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{self.listen_addresses}'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "300",
            "shared_buffers": "256MB",
            "log_min_messages": "warning",
        }
        if self.pg_cron:
            settings.update(
                {
                    "shared_preload_libraries": "'pg_cron'",
                    "cron.database_name": "'postgres'",
                    "cron.use_background_workers": "on",
                    "max_worker_processes": "32",
                }
            )
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# dispatchbox throwaway cluster\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def start_server(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )
        self.running = True

    def stop_server(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
            self.running = False

    def start(self) -> TempCluster:
        self.init()
        self.start_server()
        return self

    def stop(self) -> None:
        try:
            self.stop_server("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
