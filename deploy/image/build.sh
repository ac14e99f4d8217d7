#!/usr/bin/env bash
# Builds the container images from this machine's own files: no base image is pulled.
#
#   deploy/image/build.sh                 # concord:latest, from a fresh release build
#   deploy/image/build.sh --tag T --no-cargo --only concord
#
# Each image is `FROM scratch` with one binary, exactly the shared libraries `ldd` says it
# links, a passwd/group naming an unprivileged user, and nothing else (no shell):
# - concord            target/release/concord (stripped); health check `concord health`
# - concord-redis      Debian's redis-server and redis-cli (the durable tier)
# - concord-prometheus Debian's prometheus (scrapes the nodes in deploy/compose.yaml)
# The Debian packages are installed with apt-get when missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=latest
cargo=1
only="concord redis prometheus"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --no-cargo) cargo=0; shift ;;
    --only) only="$2"; shift 2 ;;
    *) echo "usage: $0 [--tag T] [--no-cargo] [--only 'concord redis prometheus']" >&2; exit 2 ;;
  esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need_pkg() { # command package
  command -v "$1" >/dev/null && return
  echo "installing $2 (Debian package) for its image"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# rootfs DIR UID NAME BINARY...: the binaries, their libraries at the same paths, and a
# passwd/group for NAME (UID).
rootfs() {
  local dir="$1" uid="$2" name="$3"; shift 3
  mkdir -p "$dir/etc" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  printf 'root:x:0:0:root:/:/nonexistent\n%s:x:%s:%s:%s:/:/nonexistent\n' "$name" "$uid" "$uid" "$name" >"$dir/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$name" "$uid" >"$dir/etc/group"
  printf 'hosts: files dns\n' >"$dir/etc/nsswitch.conf"
  local bin lib
  for bin in "$@"; do
    mkdir -p "$dir/usr/local/bin"
    cp "$bin" "$dir/usr/local/bin/"
    # `ldd` lists `name => /path (addr)` and the loader as `/path (addr)`.
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
}

size() { docker image inspect "$1" --format '{{.Size}}' | awk '{printf "%.1f MB", $1 / 1e6}'; }

for image in $only; do
  ctx="$work/$image"
  mkdir -p "$ctx"
  case "$image" in
    concord)
      if [ "$cargo" = 1 ]; then
        cargo build --release -p concord-gateway --bin concord
      fi
      mkdir -p "$work/bin"
      cp target/release/concord "$work/bin/concord"
      strip --strip-all "$work/bin/concord"
      rootfs "$ctx/rootfs" 10001 concord "$work/bin/concord"
      cp deploy/image/concord.Dockerfile "$ctx/Dockerfile"
      ;;
    redis)
      need_pkg redis-server redis-server
      rootfs "$ctx/rootfs" 10002 redis "$(command -v redis-server)" "$(command -v redis-cli)"
      mkdir -p "$ctx/rootfs/data"
      cp deploy/image/redis.Dockerfile "$ctx/Dockerfile"
      ;;
    prometheus)
      need_pkg prometheus prometheus
      rootfs "$ctx/rootfs" 10003 prometheus "$(command -v prometheus)"
      mkdir -p "$ctx/rootfs/prometheus" "$ctx/rootfs/etc/prometheus"
      cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yaml "$ctx/rootfs/etc/prometheus/"
      cp deploy/image/prometheus.Dockerfile "$ctx/Dockerfile"
      ;;
    *) echo "unknown image $image" >&2; exit 2 ;;
  esac
  name="concord-$image"
  [ "$image" = concord ] && name=concord
  # (The legacy builder's deprecation notice goes to stderr; shown only on failure.)
  docker build -q -t "$name:$tag" "$ctx" >/dev/null 2>"$work/build.err" || {
    cat "$work/build.err" >&2
    exit 1
  }
  echo "built $name:$tag ($(size "$name:$tag"))"
done
