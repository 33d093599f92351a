#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest) for the cluster tests
# (tests/cluster): nothing to do when it already does (this machine's, or
# DICOMNODE_TEST_BROKER names another); otherwise installs Debian's rabbitmq-server when
# missing and starts it, then waits for the port.
set -euo pipefail
[ -n "${DICOMNODE_TEST_BROKER:-}" ] && exit 0
reachable() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
reachable && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "installing rabbitmq-server with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi
echo "starting rabbitmq-server" >&2
$SUDO service rabbitmq-server start >/dev/null 2>&1 \
  || $SUDO env HOME=/var/lib/rabbitmq rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 120); do
  reachable && exit 0
  sleep 1
done
echo "RabbitMQ did not answer on 127.0.0.1:5672 within 120 s" >&2
exit 1
