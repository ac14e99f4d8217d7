#!/usr/bin/env bash
# Session continuity figures on three real `concord serve` processes on loopback.
#
#   scripts/continuity-bench.sh kill  [SESSIONS_PER_NODE]   SIGKILL the host of N sessions
#   scripts/continuity-bench.sh drain [SESSIONS_PER_NODE]   POST /admin/drain on it
#   scripts/continuity-bench.sh fanout MODE                 fan-out latency, MODE = sync|async|off
#
# kill/drain: 3 x N sessions (N on each node, default 10000) under a steady publish load,
# with `--resume-via any`; the script applies the fault to n3 once every session is up,
# polls the survivors' concord_resumes_total until N sessions resumed, and prints the
# time. The load tester's report (gaps = acknowledged events never received,
# duplicates) is written to target/continuity-<mode>.json.
#
# Needs release binaries: cargo build --release -p concord-gateway -p concord-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: $0 kill|drain|fanout [N|MODE]}
arg=${2:-}
bin=target/release
base=7100
replication=sync
[ "$mode" = fanout ] && replication=${arg:-sync}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

port() { echo $((base + 10 * ($1 - 1) + $2)); }
start_node() {
  local k=$1; shift
  "$bin/concord" serve --node-id "n$k" \
    --listen "127.0.0.1:$(port "$k" 0)" --api-listen "127.0.0.1:$(port "$k" 1)" \
    --admin-listen "127.0.0.1:$(port "$k" 2)" --gossip-listen "127.0.0.1:$(port "$k" 3)" \
    --peer-listen "127.0.0.1:$(port "$k" 4)" --cluster-secret bench-secret \
    --identify-max-concurrency 100000 --session-replication "$replication" \
    --drain-grace 60s --log warn "$@" > "target/continuity-n$k.log" 2>&1 &
  pids+=($!)
}
metric_sum() { # metric_sum NAME LABEL_SUBSTRING node...
  local name=$1 label=$2; shift 2
  local total=0
  for k in "$@"; do
    local v
    v=$(curl -s "http://127.0.0.1:$(port "$k" 2)/metrics" | grep "^$name" | grep -- "$label" | awk '{s+=$2} END {print s+0}')
    total=$((total + ${v%.*}))
  done
  echo "$total"
}

mkdir -p target
start_node 1
sleep 0.5
start_node 2 --seed "127.0.0.1:$(port 1 3)"
start_node 3 --seed "127.0.0.1:$(port 1 3)"
for _ in $(seq 100); do
  n=$(curl -s "http://127.0.0.1:$(port 1 2)/cluster" | grep -o '"ring_members":\[[^]]*\]' | grep -o '"n[0-9]"' | wc -l || true)
  [ "$n" = 3 ] && break
  sleep 0.1
done
targets="ws://127.0.0.1:$(port 3 0),ws://127.0.0.1:$(port 1 0),ws://127.0.0.1:$(port 2 0)"
apis="http://127.0.0.1:$(port 1 1)"
metrics="http://127.0.0.1:$(port 1 2),http://127.0.0.1:$(port 2 2),http://127.0.0.1:$(port 3 2)"

if [ "$mode" = fanout ]; then
  # Same guild on every node: each publish is one fan-out batch per node.
  "$bin/concord-loadtest" run --targets "$targets" --api "$apis" --connections 3000 \
    --ramp 3000/s --guilds 1 --guild-size uniform --publish-rate 100/s --duration 20s \
    --report "target/continuity-fanout-$replication.json" > /dev/null
  bytes=$(metric_sum concord_peer_bytes_sent_total "" 1 2 3)
  delivered=$(metric_sum concord_dispatches_delivered_total "" 1 2 3)
  python3 - "target/continuity-fanout-$replication.json" "$bytes" "$delivered" "$replication" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
bytes_, delivered, mode = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lat = r.get("latency_ms", {})
print(f"replication {mode}: deliveries/s {r.get('deliveries_per_sec', r.get('deliveries', 0))}, "
      f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, gaps {r.get('gaps')}, duplicates {r.get('duplicates')}, "
      f"peer bytes {bytes_} over {delivered} deliveries = {bytes_ / max(delivered, 1):.1f} B/delivery")
EOF
  exit 0
fi

per_node=${arg:-10000}
total=$((3 * per_node))
duration=$((total / 3000 + 40))
"$bin/concord-loadtest" run --targets "$targets" --api "$apis" --resume-via any \
  --connections "$total" --ramp 3000/s --guilds 100 --publish-rate 200/s \
  --duration "${duration}s" --report "target/continuity-$mode.json" > /dev/null 2> "target/continuity-$mode.stderr" &
lt=$!
pids+=($lt)
# Every session up (the victim holds a third of them).
for _ in $(seq 600); do
  s=$(metric_sum concord_sessions "" 3)
  [ "$s" -ge "$per_node" ] && break
  sleep 0.1
done
sleep 5
echo "n3 holds $(metric_sum concord_sessions "" 3) sessions; applying $mode"
t0=$(date +%s.%N)
if [ "$mode" = kill ]; then
  kill -9 "${pids[2]}"
  outcome=promoted
else
  curl -s -X POST "http://127.0.0.1:$(port 3 2)/admin/drain" > /dev/null
  outcome=migrated
fi
for _ in $(seq 1200); do
  r=$(metric_sum concord_resumes_total "outcome=\"$outcome\"" 1 2)
  [ "$r" -ge "$per_node" ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
echo "$mode: $r of $per_node sessions $outcome in $(python3 -c "print(round($t1 - $t0, 2))") s"
if [ "$mode" = drain ]; then
  wait "${pids[2]}" 2>/dev/null || true
  t2=$(date +%s.%N)
  echo "drain: n3 exited $(python3 -c "print(round($t2 - $t0, 2))") s after POST /admin/drain"
fi
wait "$lt" || true
python3 - "target/continuity-$mode.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ["connections", "resumes", "gaps", "duplicates", "errors"]})
print("deliveries", r["deliveries"], "latency_ms", r["latency_ms"])
print("published", r.get("published"))
EOF
