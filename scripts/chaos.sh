#!/usr/bin/env bash
# A repeatable fault run with figures (benches/chaos.rs says what it does and prints). It
# restarts its broker, so it starts a throwaway RabbitMQ node of its own (its own name, port
# and data folder; the node on 5672 is not touched) and stops it at the end. Installs
# rabbitmq-server from Debian's packages when it is missing; needs root or sudo to run the
# node as the rabbitmq user.
#
#   scripts/chaos.sh                          # 3,000 objects of prose and the fixtures
#   INGESTD_CHAOS_OBJECTS=10000 scripts/chaos.sh
#
# Exits 0 when nothing was lost, 1 when anything was lost or differs from the one-shot run.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    echo "chaos.sh: installing rabbitmq-server" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
fi
export PATH="$PATH:/usr/sbin"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=5673
while ! port_free "$port" || ! port_free $((port + 20000)); do port=$((port + 1)); done

node="ingestd-chaos-$$@localhost"
base="$(mktemp -d /tmp/ingestd-chaos.XXXXXX)"
chmod 755 "$base"
printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$port" >"$base/rabbitmq.conf"
echo '[].' >"$base/enabled_plugins"
# The node runs as the rabbitmq user (Debian's wrapper switches to it), with its cookie.
$sudo chown -R rabbitmq: "$base"

# rabbitmqctl for this node, as the bench calls it.
ctl="$base/rabbitmqctl"
printf '#!/bin/sh\nexec %s env PATH="$PATH:/usr/sbin" rabbitmqctl -n %s "$@"\n' "$sudo" "$node" >"$ctl"
chmod 755 "$ctl"

stop_node() {
    "$ctl" -q stop >/dev/null 2>&1 || true
    $sudo rm -rf "$base"
}
trap stop_node EXIT

echo "chaos.sh: starting the throwaway RabbitMQ node $node on 127.0.0.1:$port" >&2
(cd /tmp && $sudo env PATH="$PATH" \
    RABBITMQ_NODENAME="$node" \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) \
    RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_LOG_BASE="$base/log" \
    RABBITMQ_PID_FILE="$base/pid" \
    rabbitmq-server -detached)
# The node registers with epmd a few seconds after it is started.
for _ in $(seq 1 60); do
    "$ctl" -q await_startup >/dev/null 2>&1 && break
    sleep 1
done
"$ctl" -q await_startup

INGESTD_CHAOS_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f" \
    INGESTD_CHAOS_CTL="$ctl" \
    cargo bench --bench chaos
