#!/usr/bin/env bash
# The brokers the destination tests talk to, on loopback: RabbitMQ (5672), NATS with JetStream
# (4222) and Redis (6379). Each one reachable is left alone; one that is not is started (its
# init script, else its own binary; as root, a missing server is installed from Debian's
# packages first), and if it still does not answer this prints one line naming it and exits 1.
# `make test` runs this before pytest.
set -uo pipefail

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port seconds
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        reachable "$1" && return 0
        sleep 0.5
    done
    return 1
}

start_rabbitmq() {
    if [ -x /etc/init.d/rabbitmq-server ]; then service rabbitmq-server start >/dev/null 2>&1
    elif command -v rabbitmq-server >/dev/null; then rabbitmq-server -detached >/dev/null 2>&1
    else return 1; fi
}

start_nats() {
    command -v nats-server >/dev/null || return 1
    mkdir -p /var/lib/nats-server 2>/dev/null || true
    setsid nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
        -l /var/log/nats-server.log </dev/null >/dev/null 2>&1 &
}

start_redis() {
    if [ -x /etc/init.d/redis-server ]; then service redis-server start >/dev/null 2>&1
    elif command -v redis-server >/dev/null; then
        redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null 2>&1
    else return 1; fi
}

install() {  # binary package
    command -v "$1" >/dev/null && return 0
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" \
        >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" \
        >/dev/null 2>&1; }
}

ensure() {  # name port starter package seconds binary
    reachable "$2" && return 0
    install "$6" "$4"
    if ! "$3"; then
        echo "services: $1 is not running on 127.0.0.1:$2 and not installed (apt-get install $4)" >&2
        return 1
    fi
    if ! wait_for "$2" "$5"; then
        echo "services: $1 did not start on 127.0.0.1:$2 within $5 s (see its log)" >&2
        return 1
    fi
}

status=0
ensure RabbitMQ 5672 start_rabbitmq rabbitmq-server 90 rabbitmq-server || status=1
ensure "NATS (JetStream)" 4222 start_nats nats-server 20 nats-server || status=1
ensure Redis 6379 start_redis redis-server 20 redis-server || status=1
exit "$status"
