#!/usr/bin/env bash
# The compose smoke test, against the real Docker engine: build the images, bring up
# deploy/compose.yaml (3 nodes, Redis, Prometheus), run concord-loadtest through all three
# nodes, SIGKILL one node's container, check that the other two keep serving (a second
# load through them) and that Prometheus scrapes every live node, restart the container and
# check that it rejoins. Everything it made (containers, network, volume, images) is
# removed at the end, also on failure or Ctrl-C. Skips, saying why, only when no Docker
# engine answers.
#
#   deploy/smoke.sh              # builds the release binaries first
#   SMOKE_NO_CARGO=1 deploy/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "deploy smoke test SKIPPED: no Docker engine answers (docker info failed)"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  if ! command -v docker-compose >/dev/null; then
    echo "installing docker-compose (Debian package) for the smoke test"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  fi
  compose=(docker-compose)
fi

run="concord-smoke-$$"
tag="smoke-$$"
compose+=(-p "$run" -f deploy/compose.yaml)
tmp=$(mktemp -d)
log() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc); the nodes' last log lines:"
    for s in node1 node2 node3; do
      "${compose[@]}" logs --no-color --tail 30 "$s" 2>/dev/null || true
    done
  fi
  "${compose[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  docker rmi -f "concord:$tag" "concord-redis:$tag" "concord-prometheus:$tag" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$run")
  [ -z "$left" ] || { echo "containers left behind: $left"; rc=1; }
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SMOKE_NO_CARGO:-}" ]; then
  cargo build --release -p concord-gateway -p concord-loadtest --bins
fi
deploy/image/build.sh --no-cargo --tag "$tag"
export CONCORD_IMAGE="concord:$tag" CONCORD_REDIS_IMAGE="concord-redis:$tag" \
  CONCORD_PROMETHEUS_IMAGE="concord-prometheus:$tag"

# A port prefix whose ten host ports are all free.
in_use=$(ss -Htln | awk '{print $4}' | sed 's/.*://')
prefix=""
for p in 4 5 6 2 3; do
  clash=0
  for port in "${p}1080" "${p}1081" "${p}1090" "${p}2080" "${p}2081" "${p}2090" \
    "${p}3080" "${p}3081" "${p}3090" "${p}9099"; do
    if grep -qx "$port" <<<"$in_use"; then clash=1; fi
  done
  if [ "$clash" = 0 ]; then prefix=$p; break; fi
done
[ -n "$prefix" ] || { echo "no free port prefix for the compose ports"; exit 1; }
export CONCORD_PORT_PREFIX=$prefix
admin() { echo "http://127.0.0.1:${prefix}${1}090"; }

# Polls `$2` (a command) every 0.2 s until it succeeds or `$1` seconds pass.
wait_for() {
  local limit=$1; shift
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$until" ]; then
      echo "timed out after ${limit}s waiting for: $*"; return 1
    fi
    sleep 0.2
  done
}

# Node k's view: "<active count> <ring version>".
view() {
  curl -sf "$(admin "$1")/cluster" | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(m["state"] == "active" for m in v["members"]), v.get("ring_version"))'
}

# Every node in $2.. sees exactly $1 active members and the same ring.
agree() {
  local want=$1; shift
  local first="" k v
  for k in "$@"; do
    v=$(view "$k") || return 1
    [ "${v%% *}" = "$want" ] || return 1
    [ -z "$first" ] && first=$v
    [ "$v" = "$first" ] || return 1
  done
}

ready() { curl -sf "$(admin "$1")/readyz"; }

# Prometheus sees these targets with this health ("node1=up node3=down").
scraped() {
  curl -sf "http://127.0.0.1:${prefix}9099/api/v1/targets" | python3 -c '
import json, sys
want = dict(w.split("=") for w in sys.argv[1:])
got = {t["labels"]["instance"].split(":")[0]: t["health"]
       for t in json.load(sys.stdin)["data"]["activeTargets"]}
sys.exit(0 if all(got.get(k) == v for k, v in want.items()) else 1)' "$@"
}

loadtest() { # report, node numbers...
  local report=$1; shift
  local targets="" apis="" k
  for k in "$@"; do
    targets+="${targets:+,}ws://127.0.0.1:${prefix}${k}080"
    apis+="${apis:+,}http://127.0.0.1:${prefix}${k}081"
  done
  timeout 120 target/release/concord-loadtest run --targets "$targets" --api "$apis" \
    --token-secret compose-token-secret --publish-secret compose-publish-secret \
    --connections 300 --guilds 10 --publish-rate 200/s --duration 8s \
    --report "$report" \
    --assert 'connections.failed==0,gaps==0,duplicates==0,errors==0' \
    >"$report.log" 2>&1 || { tail -20 "$report.log"; return 1; }
  python3 - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("%d sessions, %d published, %d deliveries, p99 %.1f ms, gaps %d, duplicates %d" % (
    r["connections"]["established"], r["published"], r["deliveries"]["total"],
    r["latency_ms"]["p99"], r["gaps"], r["duplicates"]))
PY
}

log "images: $(docker image inspect "concord:$tag" --format '{{.Size}}' | awk '{printf "concord %.1f MB", $1/1e6}')"
start=$(date +%s%N)
"${compose[@]}" up -d >/dev/null 2>&1
wait_for 60 agree 3 1 2 3
wait_for 30 ready 1
wait_for 30 ready 2
wait_for 30 ready 3
log "cluster up: 3 nodes active on one ring, ready in $((($(date +%s%N) - start) / 1000000)) ms from 'up'"

out=$(loadtest "$tmp/before.json" 1 2 3)
log "load through node1-3: $out"

node3=$("${compose[@]}" ps -q node3)
docker kill "$node3" >/dev/null
killed=$(date +%s%N)
wait_for 30 agree 2 1 2
log "node3 SIGKILLed: node1 and node2 agree on a 2-node ring after $((($(date +%s%N) - killed) / 1000000)) ms"
out=$(loadtest "$tmp/after.json" 1 2)
log "load through node1-2: $out"
wait_for 60 scraped node1=up node2=up node3=down
log "Prometheus scrapes node1 and node2 (up) and reports node3 down"

restarted=$(date +%s%N)
docker start "$node3" >/dev/null
wait_for 30 ready 3
log "node3 restarted: ready in $((($(date +%s%N) - restarted) / 1000000)) ms"
wait_for 30 agree 3 1 2 3
wait_for 60 scraped node1=up node2=up node3=up
log "node3 rejoined: 3 nodes on one ring, all scraped"

# The Kubernetes preStop hook, for real: drain node2 from inside its container.
node2=$("${compose[@]}" ps -q node2)
drained=$(date +%s%N)
# The hook runs inside the container, so it is killed (137) when the node exits.
rc=0
docker exec "$node2" /usr/local/bin/concord drain --wait 40s >/dev/null || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 137 ] || { echo "concord drain failed ($rc)"; exit 1; }
[ "$(docker inspect "$node2" --format '{{.State.Running}}')" = false ] || {
  echo "node2 still runs after its drain"; exit 1; }
log "node2 drained and exited in $((($(date +%s%N) - drained) / 1000000)) ms (concord drain --wait)"
code=$(docker inspect "$node2" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { echo "node2 exited with $code after its drain"; exit 1; }
wait_for 30 agree 2 1 3
log "node1 and node3 agree on a 2-node ring"
log "PASSED"
