#!/usr/bin/env bash
# The whole test suite: the command the README gives and CI runs.
# Some tests start real brokers (redis-server, nats-server) on free loopback ports; this
# installs the Debian packages first when they are missing (needs root or sudo).
# Then the deploy/ checks (alert rules and their unit tests, Kubernetes manifests against
# the schemas) and the compose smoke test against the real Docker engine (skipped, saying
# so, where none answers). With arguments (a test filter) it runs only `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing redis-server and nats-server (Debian packages) for the peer tests"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nats-server >/dev/null
fi
cargo test --workspace "$@"
if [ $# -eq 0 ]; then
  deploy/check.sh
  deploy/smoke.sh
fi
