"""Hosts on one machine: Linux network namespaces joined to this one by veth pairs.

Each host is a namespace with one end of a veth pair (its own address, 10.231.N.2) and the other
end here (10.231.N.1), where the PostgreSQL under test listens. A process started with
``host.command(...)`` (``ip netns exec``) sees only that link: cutting it (``ip link set ...
down`` on this side) cuts that host off the database, and only that host, as a network fault
between machines would. Everything is made by ``hosts()`` and removed when it exits, on failure
too; namespaces left by a run that was killed are removed by the next one.

Needs root (CAP_NET_ADMIN) and iproute2 (`ip`); ``unavailable()`` says why not, or None.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg

PREFIX = "dbxh"  # names: dbxh<run>n<i> (namespace), dbxh<run>v<i> (veth here); 15 chars max


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (scripts/system-packages.sh installs it)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs the suite as root)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class Host:
    index: int
    namespace: str
    veth: str  # this side's end
    server_ip: str  # this side's address: where the host reaches the database
    own_ip: str  # the host's address inside its namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """The host's only link goes down: nothing reaches it, nothing leaves it."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")


def _remove_stale() -> None:
    """Namespaces and veths of earlier runs whose process is gone (killed before cleanup)."""
    text = _ip("netns", "list", check=False).stdout + _ip("-o", "link", "show", check=False).stdout
    for name, run in set(_NAME.findall(text)):
        if not Path(f"/proc/{run}").exists():
            _ip("netns", "del", name, check=False)
            _ip("link", "del", name, check=False)


_NAME = re.compile(rf"\b({PREFIX}(\d+)[nvp]\d+)\b")


@contextmanager
def hosts(count: int, *, subnet_base: int | None = None) -> Iterator[list[Host]]:
    """``count`` hosts, each in its namespace with a veth pair to this one; all removed after."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot create network namespaces: {reason}")
    _remove_stale()
    run = os.getpid()
    # A subnet per host, apart from any other run's: the third octet from our pid.
    base = subnet_base if subnet_base is not None else (run % 80) * 3
    made: list[Host] = []
    try:
        for i in range(1, count + 1):
            host = Host(
                index=i,
                namespace=f"{PREFIX}{run}n{i}",
                veth=f"{PREFIX}{run}v{i}",
                server_ip=f"10.231.{base + i}.1",
                own_ip=f"10.231.{base + i}.2",
            )
            made.append(host)
            peer = f"{PREFIX}{run}p{i}"
            _ip("netns", "add", host.namespace)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.namespace)
            _ip("addr", "add", f"{host.server_ip}/24", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            inside = ["-n", host.namespace]
            _ip(*inside, "addr", "add", f"{host.own_ip}/24", "dev", peer)
            _ip(*inside, "link", "set", peer, "up")
            _ip(*inside, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            # Deleting the namespace deletes its end of the pair, and with it ours.
            _ip("netns", "del", host.namespace, check=False)
            _ip("link", "del", host.veth, check=False)


def leftovers(made: Sequence[Host]) -> list[str]:
    """Any namespace or veth of ``made`` that still exists (the removal check)."""
    listed = set(_ip("netns", "list", check=False).stdout.split())
    found = [h.namespace for h in made if h.namespace in listed]
    for host in made:
        with suppress(RuntimeError):
            if _ip("link", "show", host.veth, check=False).returncode == 0:
                found.append(host.veth)
    return found


@contextmanager
def admitted(admin_dsn: str, hba_file: Path, cidrs: Sequence[str]) -> Iterator[None]:
    """pg_hba.conf lets clients from ``cidrs`` in (trust, as the throwaway cluster's loopback
    lines do) until the block ends."""
    original = hba_file.read_text()
    lines = "".join(f"host all all {cidr} trust\n" for cidr in cidrs)
    hba_file.write_text(original + "# dispatchbox tests/netns.py\n" + lines)
    try:
        _reload(admin_dsn)
        yield
    finally:
        hba_file.write_text(original)
        _reload(admin_dsn)


def _reload(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
