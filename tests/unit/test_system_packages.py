"""`make system` (scripts/system-packages.sh): quiet when everything is there, and one line naming
the command to run when something is missing and it may not install."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-packages.sh"


def _run(env: dict[str, str], *, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(SCRIPT)]
    if as_user is not None:
        cmd = ["runuser", "-u", as_user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd]
        env = {}
    return subprocess.run(cmd, capture_output=True, text=True, env=env or None, timeout=60)


def test_nothing_to_do_when_the_suite_has_what_it_needs() -> None:
    # `make test` ran it before this suite: the packages are there now.
    result = _run(dict(os.environ))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_rights_to_install_it_names_the_command() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test runs the script as another user and needs root (CI runs as root)")
    # A PATH where pgbouncer, promtool, ip and chromium cannot be found, for a user who is
    # neither root nor a sudoer.
    # (Outside pytest's own temp folder, which only root may enter.)
    root = Path(tempfile.mkdtemp(prefix="dispatchbox-path-"))
    root.chmod(0o755)
    bindir = root / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "readlink", "ls", "sort", "sed", "basename", "id", "env"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bindir / tool).symlink_to(found)
    try:
        result = _run({"PATH": str(bindir)}, as_user="nobody")
    finally:
        shutil.rmtree(root)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "dispatchbox: missing system packages; run: "
        "sudo apt-get install -y --no-install-recommends pgbouncer prometheus iproute2 chromium\n"
    )
