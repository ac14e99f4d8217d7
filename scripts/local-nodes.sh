#!/usr/bin/env bash
# Starts N standalone Concord nodes on loopback for load tests and prints what
# concord-loadtest needs: --targets, --api and --metrics (RSS and sessions per node).
# Each node is its own process, so each gets its own 20,000 open files. Stop them with: kill $(cat "$DIR/pids")
#
#   scripts/local-nodes.sh N [extra concord serve flags...]
#
# Node k listens on 127.0.0.1:(18000+10k) for clients, +1 API, +2 admin. Uses
# target/release/concord (cargo build --release -p concord-gateway).
set -euo pipefail
n=${1:?usage: local-nodes.sh N [serve flags...]}
shift
bin=${CONCORD_BIN:-target/release/concord}
dir=${CONCORD_NODES_DIR:-/tmp/concord-nodes}
mkdir -p "$dir"
: >"$dir/pids"
targets=()
apis=()
admins=()
for k in $(seq 0 $((n - 1))); do
  base=$((18000 + 10 * k))
  CONCORD_TOKEN_SECRET=${CONCORD_TOKEN_SECRET:-concord-dev-token-secret} \
  CONCORD_PUBLISH_SECRET=${CONCORD_PUBLISH_SECRET:-concord-dev-publish-secret} \
    "$bin" serve --node-id "n$k" \
    --listen "127.0.0.1:$base" --api-listen "127.0.0.1:$((base + 1))" \
    --admin-listen "127.0.0.1:$((base + 2))" \
    --public-url "ws://127.0.0.1:$base" \
    --max-connections 19000 --identify-max-concurrency 100000 \
    --log warn "$@" >"$dir/n$k.log" 2>&1 &
  echo $! >>"$dir/pids"
  targets+=("ws://127.0.0.1:$base")
  apis+=("http://127.0.0.1:$((base + 1))")
  admins+=("http://127.0.0.1:$((base + 2))")
done
for k in $(seq 0 $((n - 1))); do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$((18000 + 10 * k + 2))/readyz" >/dev/null && break
    sleep 0.1
  done
done
# These nodes do not form a cluster, so the load tester publishes every event to each
# node's API (--api lists them all, --publish-to each), and each node fans out to its own
# sessions. Against a cluster, pass one or more --api URLs and leave --publish-to at any.
echo "--targets $(IFS=,; echo "${targets[*]}") --api $(IFS=,; echo "${apis[*]}") --publish-to each --metrics $(IFS=,; echo "${admins[*]}")"
