#!/usr/bin/env bash
# Issue #16 soak test (not run in CI): N builds (default 200) against one
# state directory, with `kill -9` of builds and of `xbuild cache prune` at
# random points in between. After every disturbance a clean build runs and
# its result is checked by content (files exported with -o type=local):
#
#   wrong image  the clean build succeeded but its files are not what the
#                Dockerfile makes (a partial snapshot or a bad record used);
#   stuck state  the clean build failed (and so would every later one).
#
# Prints `soak: N builds, W wrong images, S stuck states` and exits non-zero
# unless both are 0. Needs root (the sandbox), `docker-registry` and a
# static busybox (/bin/busybox from Debian's busybox-static).
#
#   XBUILD_SOAK_BUILDS=N   number of builds (default 200; or the first argument)
#   XBUILD_SOAK_SEED=S     random seed (default: the time; printed)
#   XBUILD_BIN=PATH        the binary (default target/debug/xbuild, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
builds=${1:-${XBUILD_SOAK_BUILDS:-200}}
seed=${XBUILD_SOAK_SEED:-$(date +%s)}
RANDOM=$seed
echo "soak: seed $seed (XBUILD_SOAK_SEED to replay), $builds builds" >&2

bin=${XBUILD_BIN:-$repo/target/debug/xbuild}
if [ ! -x "$bin" ]; then
  cargo build -p xbuild >&2
fi
[ "$(id -u)" = 0 ] || { echo "soak: needs root (the RUN sandbox)" >&2; exit 2; }
command -v docker-registry >/dev/null || { echo "soak: docker-registry is not installed" >&2; exit 2; }
busybox=${XBUILD_SOAK_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "soak: no static busybox at $busybox" >&2; exit 2; }

work=$(mktemp -d /tmp/xbuild-soak.XXXXXX)
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
  # Mounts a killed build left are cleaned by the next xbuild command.
  XBUILD_ROOT=$work/state "$bin" cache du >/dev/null 2>&1 || true
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

export XBUILD_ROOT=$work/state
export XBUILD_CONFIG=$work/config.yaml
export DOCKER_CONFIG=$work/docker
export XBUILD_REGISTRY_TIMEOUT=30

# A registry on loopback.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
reg=127.0.0.1:$port

# The base image: busybox on scratch, for the host's platform.
mkdir -p "$work/base/rootfs/bin"
cp "$busybox" "$work/base/rootfs/bin/busybox"
for t in sh ls wc seq xargs touch mkdir echo cat sleep rm; do
  ln -s busybox "$work/base/rootfs/bin/$t"
done
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$work/base/Dockerfile"
"$bin" build --progress quiet -t "$reg/soak/base:1" --push "$work/base" >/dev/null

# The project: many files in one layer (slow to remove: kills land inside),
# a build arg that moves between a few values (hits and misses).
mkdir -p "$work/ctx"
head -c 100000 /dev/urandom >"$work/ctx/data.bin"
data_size=$(wc -c <"$work/ctx/data.bin")
many=3000
cat >"$work/ctx/Dockerfile" <<EOF
FROM $reg/soak/base:1
ARG V=0
RUN mkdir /many && cd /many && seq 1 $many | xargs touch
COPY data.bin /data.bin
RUN echo "\$V" > /v && wc -c < /data.bin > /size && ls /many | wc -l > /count
EOF

# Starts `xbuild ARGS...` and kills it with SIGKILL after 0-3 s.
disturb() {
  "$bin" "$@" >/dev/null 2>&1 &
  local pid=$!
  local ms=$((RANDOM % 3000))
  sleep "$(printf '0.%03d' $((ms % 1000)))"
  [ $ms -ge 1000 ] && sleep $((ms / 1000))
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

n=0 wrong=0 stuck=0 killed=0 pruned=0
out=$work/out
while [ $n -lt "$builds" ]; do
  v=$((RANDOM % 4))
  case $((RANDOM % 3)) in
    0) disturb build --progress plain --build-arg "V=$v" "$work/ctx"; killed=$((killed + 1)); n=$((n + 1)) ;;
    1) disturb cache prune --all; pruned=$((pruned + 1)) ;;
    2) disturb cache prune; pruned=$((pruned + 1)) ;;
  esac
  # The clean build, checked by content.
  rm -rf "$out"
  flags=()
  [ $((RANDOM % 4)) = 0 ] && flags+=(--no-cache)
  if "$bin" build --progress plain "${flags[@]}" --build-arg "V=$v" -o "type=local,dest=$out" \
      "$work/ctx" >"$work/last.log" 2>&1; then
    got="$(cat "$out/v" 2>/dev/null) $(cat "$out/size" 2>/dev/null) $(cat "$out/count" 2>/dev/null) $(ls "$out/many" 2>/dev/null | wc -l)"
    want="$v $data_size $many $many"
    if [ "$got" != "$want" ]; then
      wrong=$((wrong + 1))
      echo "soak: build $n: wrong image: got '$got', want '$want'" >&2
    fi
  else
    stuck=$((stuck + 1))
    echo "soak: build $n failed after a disturbance:" >&2
    tail -5 "$work/last.log" >&2
  fi
  n=$((n + 1))
  if [ $((n % 20)) -lt 2 ] && [ $n -ge 20 ]; then
    echo "soak: $n builds so far ($killed killed builds, $pruned disturbed prunes), $wrong wrong, $stuck stuck" >&2
  fi
done
echo "soak: $n builds, $wrong wrong images, $stuck stuck states"
[ $wrong = 0 ] && [ $stuck = 0 ]
