#!/usr/bin/env bash
# The system packages the test suite needs beside Python: the pg_cron build that matches the
# PostgreSQL server binaries found here (the archive schedule tests), pgbouncer (the
# transaction-pooling test), promtool, from Debian's prometheus package (the alert-rule
# tests), iproute2 (the many-hosts test's network namespaces) and chromium (the console's browser
# tests). Installs them with apt where it may (root, or passwordless sudo); otherwise stops with
# one line naming the command to run. Quiet when nothing is missing.
set -euo pipefail

# The server binaries tempcluster.py will use: initdb on PATH, else the newest Debian install.
bindir=""
if command -v initdb >/dev/null 2>&1; then
    bindir="$(dirname "$(readlink -f "$(command -v initdb)")")"
else
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [ -x "$dir/initdb" ]; then bindir="$dir"; break; fi
    done
fi

missing=()
if [ -n "${DISPATCHBOX_TEST_DSN:-}" ]; then
    : # an external server: its extensions are its administrator's business
elif [ -z "$bindir" ]; then
    missing+=(postgresql)
else
    major="$("$bindir/pg_config" --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
    [ -n "$major" ] || major="$(basename "$(dirname "$bindir")")"
    libdir="$("$bindir/pg_config" --pkglibdir 2>/dev/null || echo "$(dirname "$bindir")/lib")"
    if [ ! -e "$libdir/pg_cron.so" ]; then
        missing+=("postgresql-$major-cron")
    fi
fi
if ! command -v pgbouncer >/dev/null 2>&1; then
    missing+=(pgbouncer)
fi
# promtool checks and unit-tests docs/prometheus-rules.yml. Debian ships it in the server
# package only; installing that does not start a server where no init system runs (containers),
# and elsewhere `systemctl disable --now prometheus` stops it if you do not want one.
if ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)
fi
# iproute2's `ip` makes the network namespaces of the many-hosts test
# (tests/reliability/test_many_hosts.py) and bench/hosts.py.
if ! command -v ip >/dev/null 2>&1; then
    missing+=(iproute2)
fi
# Chromium drives the console's browser tests (Playwright with executable_path; Playwright never
# downloads a browser of its own here).
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "dispatchbox: missing system packages; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "dispatchbox: missing system packages (${missing[*]}) and no apt-get here; install them with your package manager" >&2
    exit 1
fi

echo "installing system packages: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
# Without Recommends: prometheus's pull in node-exporter and others the suite does not use.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
# The server itself may have been the missing piece: its pg_cron build is known only now.
if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    exec "$0"
fi
