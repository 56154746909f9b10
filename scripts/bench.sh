#!/usr/bin/env bash
# Issue #8: xbuild side by side with `buildah bud --isolation chroot --layers`
# on the same machine, in one run, on Dockerfiles this script generates
# (nothing is downloaded). The cpu workload also builds on a remote node:
# a throw-away OpenSSH sshd on 127.0.0.2 that the script starts (own keys,
# config, HOME and XBUILD_CONFIG; the user's configuration is not read) and
# stops. Prints a table of medians with the ratio
# xbuild/buildah and PASS/MISS against the targets (never fails on timing),
# then runs the criterion micro-benchmarks of the hot paths
# (`cargo bench -p xbuild-engine --bench hot_paths`) and times sha256sum,
# `tar | gzip -1` and `tar | pigz -1` on the same data.
#
# The result, with a description of the machine, is written between the
# `bench:begin`/`bench:end` markers of docs/benchmarks.md (the rest of that
# file, the analysis, is kept).
#
#   XBUILD_BENCH_RUNS=N     runs per measurement, median reported (default 3)
#   XBUILD_BENCH_QUICK=1    small variant to iterate on (2,000 files / 36 MB
#                           context, shorter loops); writes
#                           $CARGO_TARGET_DIR/bench/benchmarks-quick.md
#                           instead of docs/benchmarks.md
#   XBUILD_BENCH_OUT=FILE   where to write the report instead
#   XBUILD_BENCH_MICRO=0    skip the micro-benchmarks
#   XBUILD_BENCH_ONLY=NAME  only one workload: small (with push), cpu (with
#                           the SSH node rows), large or cross; no micro
#   XBUILD_BENCH_BIN=DIR    take xbuild and xbuild-testbed from DIR instead of
#                           a release build (e.g. target/debug on a busy box)
#   XBUILD_SKIP_SETUP=1     do not run scripts/setup.sh
#   XBUILD_BENCH_MIN_FREE_GB=N  free space required in /tmp (default 6, quick 1)
#   CARGO_TARGET_DIR        honoured (default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

runs=${XBUILD_BENCH_RUNS:-3}
# The machine may be shared: the load when the run starts goes into the report.
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
quick=${XBUILD_BENCH_QUICK:-0}
micro=${XBUILD_BENCH_MICRO:-1}
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
only=${XBUILD_BENCH_ONLY:-}
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
# One workload is not the whole table: its report goes next to the others'.
[ -z "$only" ] || { micro=0; XBUILD_BENCH_OUT=${XBUILD_BENCH_OUT:-$target_dir/bench/benchmarks-$only.md}; }
if [ "$quick" = 1 ]; then
  out=${XBUILD_BENCH_OUT:-$target_dir/bench/benchmarks-quick.md}
  large_dirs=10      # x 200 files, 3.6 MB each
  cpu_loops=150000
  micro_mb=16
else
  out=${XBUILD_BENCH_OUT:-docs/benchmarks.md}
  large_dirs=100     # 20,000 files, 360 MB
  cpu_loops=600000
  micro_mb=64
fi

if [ "${XBUILD_SKIP_SETUP:-0}" != 1 ]; then
  scripts/setup.sh
fi
# GNU time (peak memory) and pigz (the compression peer) when missing.
want_pkgs=()
[ -x /usr/bin/time ] || want_pkgs+=(time)
command -v pigz >/dev/null 2>&1 || want_pkgs+=(pigz)
if [ "${#want_pkgs[@]}" -gt 0 ] && [ "$(id -u)" -eq 0 ]; then
  log "installing ${want_pkgs[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}" >/dev/null 2>&1 ||
      log "could not install ${want_pkgs[*]}; going on without"
  fi
fi
have_time=0
[ -x /usr/bin/time ] && have_time=1
have_pigz=0
command -v pigz >/dev/null 2>&1 && have_pigz=1

if [ -n "${XBUILD_BENCH_BIN:-}" ]; then
  bin_dir=$XBUILD_BENCH_BIN
  bin_kind="binaries from $bin_dir"
else
  log "building xbuild (release)"
  CARGO_TARGET_DIR=$target_dir cargo build --release --locked -p xbuild -p xbuild-testbed
  bin_dir=$target_dir/release
  bin_kind="release build"
fi
t_measure=$SECONDS
xb=$bin_dir/xbuild
testbed=$bin_dir/xbuild-testbed

work=$(mktemp -d /tmp/xbuild-bench.XXXXXX)
# The cold states are kept until the end (see new_state) and buildah's vfs
# storage copies every layer: a full run needs several GB in $work. Fail
# now, clearly, rather than with ENOSPC half-way through.
min_free_gb=${XBUILD_BENCH_MIN_FREE_GB:-$([ "$quick" = 1 ] && echo 1 || echo 6)}
free_gb=$(df --output=avail -B1G "$work" | tail -n 1 | tr -d ' ')
if [ "$free_gb" -lt "$min_free_gb" ]; then
  echo "only $free_gb GB free in $(dirname "$work"); the bench needs about $min_free_gb GB" \
    "(XBUILD_BENCH_MIN_FREE_GB overrides)" >&2
  rmdir "$work"
  exit 1
fi
logs_keep=$target_dir/bench/logs # the output of every measured command, kept
registry_pid=
sshd_pid=
cleanup() {
  local pid
  for pid in $sshd_pid $registry_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  # Nothing should stay mounted, but never delete through a mount.
  { findmnt -rn -o TARGET 2>/dev/null | grep -F "$work/" | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done; } || true
  if [ -d "$work/logs" ]; then
    { rm -rf "$logs_keep" && mkdir -p "$logs_keep/times" && cp -r "$work/logs/." "$logs_keep/" &&
      cp -r "$work/t/." "$logs_keep/times/"; } || true
  fi
  rm -rf "$work" || true
}
trap cleanup EXIT
# xbuild reads no configuration of the user's: an empty one (no nodes), so
# that every build except the SSH-node rows runs here. The node rows use
# their own HOME and XBUILD_CONFIG (see the SSH node section).
export XBUILD_CONFIG=$work/config-no-nodes.yaml

# ---------------------------------------------------------------- helpers

# t_run KEY CMD...: runs CMD, appends its wall time (s) to $work/t/KEY.
mkdir -p "$work/t" "$work/logs"
t_run() {
  local key=$1
  shift
  local t0=$EPOCHREALTIME
  if ! "$@" >>"$work/logs/$key.log" 2>&1; then
    echo "benchmark command failed ($key): $*" >&2
    tail -n 30 "$work/logs/$key.log" >&2
    exit 1
  fi
  local t1=$EPOCHREALTIME
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>"$work/t/$key"
}
# t_rss KEY CMD...: like t_run, also records the peak RSS (KiB) in $work/t/KEY.rss.
t_rss() {
  local key=$1
  shift
  if [ "$have_time" = 1 ]; then
    t_run "$key" /usr/bin/time -v -o "$work/time.out" "$@"
    awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.out" >>"$work/t/$key.rss"
  else
    t_run "$key" "$@"
  fi
}
median() { # median of the numbers in file $1
  [ -s "$1" ] || { echo NA; return; }
  sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
max_of() { [ -s "$1" ] && sort -g "$1" | tail -n 1 || echo NA; }
bytes_of() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# Result rows: the cells of a table row, tab-separated.
tab=$'\t'
rows=()
# add_time LABEL KEY TARGET: a timed row; TARGET is a maximum ratio or "".
# add_time LABEL KEY TARGET [NOTE]: NOTE fills the result cell of a row
# without a target.
add_time() {
  local label=$1 key=$2 goal=$3 x b ratio verdict=${4:-}
  x=$(median "$work/t/x-$key")
  b=$(median "$work/t/b-$key")
  ratio=$(awk -v x="$x" -v b="$b" 'BEGIN { if (x == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", x / b }')
  if [ -n "$goal" ] && [ "$ratio" != NA ]; then
    verdict=$(awk -v r="$ratio" -v g="$goal" 'BEGIN {
      m = (g - r) / g * 100
      if (r <= g) printf "PASS: %.2f× ≤ %s× (%.0f%% under)", r, g, m; else printf "MISS: %.2f× > %s× (%.0f%% over)", r, g, -m }')
  fi
  local tcell=—
  [ -z "$goal" ] || tcell="≤${goal}×"
  rows+=("$label$tab$x s$tab$b s$tab$ratio×$tab$tcell$tab$verdict")
}
add_na() { rows+=("$1$tab$2$tab$2$tab$tab$tab"); }
# add_thrpt LABEL XBUILD_MBS PEER_NAME PEER_MBS MIN_RATIO: throughput row
# (higher is better); the ratio is xbuild/peer.
add_thrpt() {
  local label=$1 x=$2 peer=$3 p=$4 goal=$5 ratio verdict=""
  ratio=$(awk -v x="$x" -v b="$p" 'BEGIN { if (x == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", x / b }')
  if [ -n "$goal" ] && [ "$ratio" != NA ]; then
    verdict=$(awk -v r="$ratio" -v g="$goal" 'BEGIN {
      m = (r - g) / g * 100
      if (r >= g) printf "PASS: %.2f× ≥ %s× (%.0f%% over)", r, g, m; else printf "MISS: %.2f× < %s× (%.0f%% under)", r, g, -m }')
  fi
  local tcell=—
  [ -z "$goal" ] || tcell="≥${goal}×"
  micro_rows+=("$label$tab$x MB/s$tab$peer: $p MB/s$tab$ratio×$tab$tcell$tab$verdict")
}
micro_rows=()

# ---------------------------------------------------------------- registry

log "starting a registry on 127.0.0.1"
port=
for p in $(shuf -i 20000-45000 -n 40); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
  cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$p
YAML
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$p/v2/" >/dev/null 2>&1 && { port=$p; break; }
    kill -0 "$registry_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] && break
  kill "$registry_pid" 2>/dev/null || true
  wait "$registry_pid" 2>/dev/null || true
  registry_pid=
done
if [ -z "$port" ]; then
  echo "could not start a registry:" >&2
  cat "$work/registry.log" >&2
  exit 1
fi
reg=127.0.0.1:$port
base=$reg/xbuild/busybox:latest

log "registering QEMU for linux/arm64"
"$xb" binfmt install linux/arm64 >&2

log "publishing the busybox base image (amd64, arm64) to $reg"
"$testbed" base-context "$work/base" amd64 arm64 >/dev/null
XBUILD_ROOT=$work/base-state "$xb" build --progress quiet --platform linux/amd64,linux/arm64 \
  -t "$base" --push "$work/base" >/dev/null
rm -rf "$work/base-state"

# ---------------------------------------------------------------- workloads

# Every cold run gets new, empty state directories (XBUILD_ROOT and the
# buildah root); old ones are removed only at the end. Deleting a large
# state right before a cold run makes ext4 skip recently freed inodes while
# the next run creates its files (`recently_deleted` in the kernel's
# profile), which costs either tool seconds that have nothing to do with it.
nstate=0
new_state() {
  nstate=$((nstate + 1))
  xstate=$work/state/x$nstate
  bstate=$work/state/b$nstate
  export XBUILD_ROOT=$xstate
}
new_state
x() { "$xb" build --progress plain "$@"; }
bah() { buildah --root "$bstate/root" --runroot "$bstate/run" --storage-driver vfs "$@"; }
bud() { bah bud --isolation chroot --layers --tls-verify=false -q "$@"; }
both=linux/amd64,linux/arm64

if want small; then
# 1. small: ARG, RUN, COPY of 50 files, CMD.
small=$work/small
mkdir -p "$small/files"
for i in $(seq -w 1 50); do
  { echo "file $i"; head -c 1536 /dev/urandom | base64; } >"$small/files/f$i.txt"
done
cat >"$small/Dockerfile" <<'EOF'
ARG BASE
FROM ${BASE}
ARG GREETING=hello
RUN echo "$GREETING from $(uname -m)" > /greeting && i=0 && while [ $i -lt 2000 ]; do i=$((i+1)); done
COPY files/ /app/files/
CMD ["sh", "-c", "cat /greeting; ls /app/files | wc -l"]
EOF
xs() { x --platform "$both" --build-arg "BASE=$base" -t bench/small:latest "$small"; }
bs() { bud --platform "$both" --manifest bench-small --build-arg "BASE=$base" "$small"; }

log "small, 2 platforms: cold ($runs runs each)"
for _ in $(seq "$runs"); do
  new_state
  t_run x-small-cold xs
  t_run b-small-cold bs
done
log "small, 2 platforms: warm"
for _ in $(seq "$runs"); do
  t_run x-small-warm xs
  t_run b-small-warm bs
done
log "small, 2 platforms: one file changed"
for i in $(seq "$runs"); do
  echo "changed $i $RANDOM" >"$small/files/f07.txt"
  t_run x-small-change xs
  t_run b-small-change bs
done

# 4. push (the warm small state): first push to a new repository, then a
# push where only the COPY layer changed. Both timed as build + push: xbuild
# `build --push` (the build is all cache hits), buildah `bud --manifest`
# (all cached) + `manifest push --all`.
log "push: small image, 2 platforms"
bpush() {
  bah manifest rm "bench-push-$1" >/dev/null 2>&1 || true
  bud --platform "$both" --manifest "bench-push-$1" --build-arg "BASE=$base" "$small" &&
    bah manifest push --all --tls-verify=false -q "bench-push-$1" "docker://$reg/bench/b-small-$1:latest"
}
for i in $(seq "$runs"); do
  echo "push $i $RANDOM" >"$small/files/f07.txt"
  xs >/dev/null 2>&1 # build first, so that only the push differs
  bs >/dev/null 2>&1
  t_run x-push-first x --platform "$both" --build-arg "BASE=$base" -t "$reg/bench/x-small-$i:latest" --push "$small"
  t_run b-push-first bpush "$i"
  echo "push $i changed $RANDOM" >"$small/files/f07.txt"
  t_run x-push-change x --platform "$both" --build-arg "BASE=$base" -t "$reg/bench/x-small-$i:latest" --push "$small"
  t_run b-push-change bpush "$i"
done

fi # small

# 3. cpu: a CPU-bound shell loop; the SEED argument makes every run a miss
# of the RUN step only (the base stays in the local state).
cpu=$work/cpu
mkdir -p "$cpu"
cat >"$cpu/Dockerfile" <<EOF
ARG BASE
FROM \${BASE}
ARG SEED=0
RUN echo "\$SEED" > /seed && i=0 && while [ \$i -lt $cpu_loops ]; do i=\$((i+1)); done && echo \$i > /loops
EOF
if want cpu; then
for plat in amd64 arm64; do
  log "cpu: $cpu_loops shell iterations on linux/$plat"
  for i in $(seq "$runs"); do
    t_run "x-cpu-$plat" x --platform "linux/$plat" --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" -t bench/cpu:latest "$cpu"
    t_run "b-cpu-$plat" bud --platform "linux/$plat" --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" -t bench/cpu:latest "$cpu"
  done
done

# 3b. cpu on a loopback SSH node: a throw-away OpenSSH sshd on 127.0.0.2
# (its own host key, authorized key and config; stopped by the EXIT trap),
# registered as a linux/amd64 node in a configuration of its own, with the
# agent's state in its own directory. The node is this machine, so the row
# measures what going through a node costs (SSH session, agent start,
# context and cache sync, layers back), not what a faster node would save.
node_name=bench
node_na=
node_dir=$work/node
node_home=$node_dir/home
# xbuild with the node's configuration; SSH_AUTH_SOCK unset so that only
# the node's key is offered.
xn() { HOME=$node_home XBUILD_CONFIG=$node_home/config.yaml SSH_AUTH_SOCK= "$xb" build --progress plain "$@"; }
start_node() {
  if [ "$(uname -m)" != x86_64 ]; then
    node_na="n/a: the node is an amd64 node and this host is $(uname -m)"
    return
  fi
  if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null 2>&1; then
    node_na="n/a: openssh-server is not installed"
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    node_na="n/a: the loopback node logs in as root; run as root"
    return
  fi
  mkdir -p "$node_home/.ssh" "$node_dir/state" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -C xbuild-bench-host -f "$node_dir/host_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C xbuild-bench-client -f "$node_dir/client_ed25519"
  cp "$node_dir/client_ed25519.pub" "$node_dir/authorized_keys"
  local p sport=
  for p in $(shuf -i 20000-45000 -n 40); do
    if (exec 3<>"/dev/tcp/127.0.0.2/$p") 2>/dev/null; then continue; fi
    cat >"$node_dir/sshd_config" <<CFG
Port $p
ListenAddress 127.0.0.2
HostKey $node_dir/host_ed25519
PidFile $node_dir/sshd.pid
AuthorizedKeysFile $node_dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
MaxSessions 50
CFG
    /usr/sbin/sshd -D -e -f "$node_dir/sshd_config" </dev/null >/dev/null 2>>"$node_dir/sshd.log" &
    sshd_pid=$!
    for _ in $(seq 100); do
      if [ "$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.2/$1" && head -c 4 <&3' _ "$p" 2>/dev/null)" = SSH- ]; then
        sport=$p
        break
      fi
      kill -0 "$sshd_pid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$sport" ] && break
    kill "$sshd_pid" 2>/dev/null || true
    wait "$sshd_pid" 2>/dev/null || true
    sshd_pid=
  done
  if [ -z "$sport" ]; then
    echo "could not start sshd on 127.0.0.2:" >&2
    cat "$node_dir/sshd.log" >&2
    node_na="n/a: sshd did not start (see the log above)"
    return
  fi
  # The host key is known beforehand: no --accept-new-host-key needed.
  echo "[127.0.0.2]:$sport $(cut -d' ' -f1,2 "$node_dir/host_ed25519.pub")" >"$node_home/.ssh/known_hosts"
  HOME=$node_home XBUILD_CONFIG=$node_home/config.yaml SSH_AUTH_SOCK= "$xb" node add "$node_name" \
    "ssh://root@127.0.0.2:$sport" --platform linux/amd64 --identity "$node_dir/client_ed25519" \
    --agent-command "$xb agent --stdio --root $node_dir/state" >&2
  # One untimed build puts the base image into the node's state, and
  # checks that the platform really goes to the node.
  xn --platform linux/amd64 --build-arg "BASE=$base" --build-arg "SEED=warm-up" \
    --metadata-file "$node_dir/meta.json" -t bench/cpu:latest "$cpu" >"$work/logs/node-warm-up.log" 2>&1 ||
    { tail -n 30 "$work/logs/node-warm-up.log" >&2; exit 1; }
  local worker
  worker=$(jq -r '."xbuild.platforms"."linux/amd64".worker' "$node_dir/meta.json")
  if [ "$worker" != "node $node_name" ]; then
    echo "the warm-up build ran on '$worker', not on node $node_name:" >&2
    tail -n 30 "$work/logs/node-warm-up.log" >&2
    exit 1
  fi
}
# expect_plan KEY LINE: every run logged in $work/logs/KEY.log printed LINE
# in its scheduling plan (the rows measure what they claim to).
expect_plan() {
  local n
  n=$(grep -cF -- "$2" "$work/logs/$1.log" || true)
  if [ "$n" != "$runs" ]; then
    echo "$1: '$2' in $n of $runs runs (see $work/logs/$1.log)" >&2
    exit 1
  fi
}
log "starting sshd on 127.0.0.2 and registering it as node $node_name"
start_node
if [ -z "$node_na" ]; then
  log "cpu: linux/amd64 on the loopback SSH node"
  for i in $(seq "$runs"); do
    t_run x-cpu-node xn --platform linux/amd64 --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" -t bench/cpu:latest "$cpu"
  done
  expect_plan x-cpu-node "linux/amd64 → node $node_name (native)"
  # buildah has no nodes: its column is its local native build.
  cp "$work/t/b-cpu-amd64" "$work/t/b-cpu-node"
else
  log "skipping the SSH node rows: $node_na"
fi
# Both platforms in one build: xbuild all here (amd64 native + arm64 QEMU,
# in parallel), xbuild with amd64 on the node, buildah doing both here.
log "cpu: linux/amd64 + linux/arm64 in one build"
for i in $(seq "$runs"); do
  t_run x-cpu2-local x --platform "$both" --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" -t bench/cpu2:latest "$cpu"
  if [ -z "$node_na" ]; then
    t_run x-cpu2-node xn --platform "$both" --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" -t bench/cpu2:latest "$cpu"
  fi
  t_run b-cpu2 bud --platform "$both" --manifest bench-cpu2 --build-arg "BASE=$base" --build-arg "SEED=$i-$RANDOM" "$cpu"
done
cp "$work/t/b-cpu2" "$work/t/b-cpu2-local"
if [ -z "$node_na" ]; then
  expect_plan x-cpu2-node "linux/amd64 → node $node_name (native)"
  expect_plan x-cpu2-node "linux/arm64 → local qemu"
  cp "$work/t/b-cpu2" "$work/t/b-cpu2-node"
  # The node is not needed any more.
  kill "$sshd_pid" 2>/dev/null || true
  wait "$sshd_pid" 2>/dev/null || true
  sshd_pid=
fi

fi # cpu

# 5. cross-compile: a `FROM --platform=$BUILDPLATFORM` stage whose compile
# step does not depend on the target (the cpu loop stands in for a cross
# toolchain, so that the row runs offline on the testbed base), then
# `ARG TARGETARCH` and a target-specific step; the target stage copies the
# result. xbuild runs the shared step once for every target. Cold: new
# state per run, 1 target (amd64) and 2 targets.
cross=$work/cross
mkdir -p "$cross"
cat >"$cross/Dockerfile" <<EOF
ARG BASE
FROM --platform=\$BUILDPLATFORM \${BASE} AS build
RUN i=0 && while [ \$i -lt $cpu_loops ]; do i=\$((i+1)); done && echo \$i > /compiled
ARG TARGETARCH
RUN mkdir -p /out && echo "\$(cat /compiled) for \$TARGETARCH" > /out/app
FROM \${BASE}
COPY --from=build /out/app /app
EOF
if want cross; then
  log "cross-compile: \$BUILDPLATFORM stage, 1 and 2 targets, cold"
  for _ in $(seq "$runs"); do
    new_state
    t_run x-cross1 x --platform linux/amd64 --build-arg "BASE=$base" -t bench/cross:latest "$cross"
    t_run b-cross1 bud --platform linux/amd64 --build-arg "BASE=$base" -t bench/cross:latest "$cross"
    new_state
    t_run x-cross2 x --platform "$both" --build-arg "BASE=$base" -t bench/cross2:latest "$cross"
    t_run b-cross2 bud --platform "$both" --manifest bench-cross2 --build-arg "BASE=$base" "$cross"
  done
  # The row measures what it claims: one shared compile step per run.
  n=$(grep -cE '^#[0-9]+ \[linux/amd64,linux/arm64 build 2/4\] RUN i=0' "$work/logs/x-cross2.log" || true)
  if [ "$n" != "$runs" ]; then
    echo "x-cross2: the shared compile step was shown $n times in $runs runs" >&2
    exit 1
  fi
fi

if want large; then
# 2. large context: mixed text (compressible) and random data, COPY . /ctx/.
large=$work/large
log "generating the large context ($((large_dirs * 200)) files, $((large_dirs * 36 / 10)) MB)"
mkdir -p "$large"
for d in $(seq -w 0 $((large_dirs - 1))); do
  mkdir -p "$large/d$d/text" "$large/d$d/bin"
  # 100 text files of 12 kB: log-like lines (compresses well)...
  awk -v d="$((10#$d))" -v limit=$((100 * 12000)) 'BEGIN {
    for (i = 0; n < limit; i++) {
      k = d * 100000 + i
      l = sprintf("%08d INFO request id=%05d path=/api/v1/items/%d status=%d\n", k, k * 7919 % 65536, k % 977, (k % 7 ? 200 : 404))
      if (n + length(l) > limit) l = substr(l, 1, limit - n)
      printf "%s", l; n += length(l)
    } }' | split -b 12000 -a 3 -d - "$large/d$d/text/t"
  # ...and 100 random files of 24 kB (does not compress).
  head -c $((100 * 24000)) /dev/urandom | split -b 24000 -a 3 -d - "$large/d$d/bin/r"
done
cat >"$large/Dockerfile" <<'EOF'
ARG BASE
FROM ${BASE}
COPY . /ctx/
EOF
large_files=$(find "$large" -type f | wc -l)
large_bytes=$(bytes_of "$large")
# Plain commands (not shell functions): /usr/bin/time runs them.
xl=("$xb" build --progress plain --platform linux/amd64 --build-arg "BASE=$base" -t bench/large:latest "$large")
set_bl() {
  bl=(buildah --root "$bstate/root" --runroot "$bstate/run" --storage-driver vfs
    bud --isolation chroot --layers --tls-verify=false -q
    --platform linux/amd64 --build-arg "BASE=$base" -t bench/large:latest "$large")
}
log "large context: cold ($large_files files, $((large_bytes / 1000000)) MB)"
# All xbuild runs first, then all buildah runs: buildah removes its
# working container (the whole context again) at the end of every run, and
# those freed inodes would slow down whatever cold run comes next (see
# new_state); this way each tool only meets the deletions it makes itself.
for _ in $(seq "$runs"); do
  new_state
  sync
  t_rss x-large-cold "${xl[@]}"
done
xwarm=$xstate
for _ in $(seq "$runs"); do
  new_state
  set_bl
  sync
  t_rss b-large-cold "${bl[@]}"
done
export XBUILD_ROOT=$xwarm
# Compressed size of the layer: xbuild's blob against gzip -1 / pigz -1 of
# the same files (a fast compressor that compresses less is no win).
x_layer=$(find "$xwarm/content/blobs" -type f -printf '%s\n' | sort -n | tail -n 1)
gz_layer=$(tar -C "$large" -cf - . | gzip -1 | wc -c)
pz_layer=NA
[ "$have_pigz" = 0 ] || pz_layer=$(tar -C "$large" -cf - . | pigz -1 | wc -c)
log "large context: warm"
for _ in $(seq "$runs"); do
  t_rss x-large-warm "${xl[@]}"
  t_rss b-large-warm "${bl[@]}"
done

fi # large

if want small; then
add_time "small, 2 platforms, cold" small-cold 1.0
add_time "small, 2 platforms, warm (nothing changed)" small-warm 0.2
add_time "small, 2 platforms, one file changed" small-change ""
fi
if want large; then
add_time "large context, amd64, cold" large-cold 0.6
add_time "large context, amd64, warm (nothing changed)" large-warm 0.1
fi
if want cpu; then
add_time "cpu loop, native (linux/amd64)" cpu-amd64 ""
add_time "cpu loop, QEMU (linux/arm64)" cpu-arm64 ""
if [ -z "$node_na" ]; then
  node_over=$(awk -v n="$(median "$work/t/x-cpu-node")" -v l="$(median "$work/t/x-cpu-amd64")" \
    'BEGIN { printf "node − local: %+.3f s (%+.0f%%)", n - l, (n - l) / l * 100 }')
  add_time "cpu loop, loopback SSH node (linux/amd64, native there)" cpu-node "" "$node_over"
else
  add_na "cpu loop, loopback SSH node (linux/amd64)" "$node_na"
fi
add_time "cpu loop, 2 platforms, both here (amd64 native + arm64 QEMU)" cpu2-local ""
if [ -z "$node_na" ]; then
  node_over2=$(awk -v n="$(median "$work/t/x-cpu2-node")" -v l="$(median "$work/t/x-cpu2-local")" \
    'BEGIN { printf "node − here: %+.3f s (%+.0f%%)", n - l, (n - l) / l * 100 }')
  add_time "cpu loop, 2 platforms, amd64 on the SSH node + arm64 QEMU here" cpu2-node "" "$node_over2"
else
  add_na "cpu loop, 2 platforms, amd64 on the SSH node + arm64 QEMU here" "$node_na"
fi
fi # cpu
if want cross; then
  add_time "cross-compile (\$BUILDPLATFORM stage), 1 target (amd64), cold" cross1 ""
  # Two targets against one: the shared step runs once, so about 1×.
  cross_note=$(awk -v x1="$(median "$work/t/x-cross1")" -v x2="$(median "$work/t/x-cross2")" \
    -v b1="$(median "$work/t/b-cross1")" -v b2="$(median "$work/t/b-cross2")" \
    'BEGIN { printf "2 targets / 1 target: xbuild %.2f×, buildah %.2f×", x2 / x1, b2 / b1 }')
  add_time "cross-compile (\$BUILDPLATFORM stage), 2 targets (amd64 + arm64), cold" cross2 "" "$cross_note"
fi
if want small; then
add_time "push small, 2 platforms, new repository" push-first ""
add_time "push small, 2 platforms, one layer changed" push-change ""
fi
rss_row=
if ! want large; then
  :
elif [ "$have_time" = 1 ]; then
  xr=$(max_of "$work/t/x-large-cold.rss")
  br=$(max_of "$work/t/b-large-cold.rss")
  xw=$(max_of "$work/t/x-large-warm.rss")
  bw=$(max_of "$work/t/b-large-warm.rss")
  rss_row=$(awk -v x="$xr" -v b="$br" -v xw="$xw" -v bw="$bw" 'BEGIN {
    r = x / b; ok = (x <= 262144) ? "PASS" : "MISS"
    printf "peak RSS, large context cold (warm)\t%.0f MiB (%.0f MiB)\t%.0f MiB (%.0f MiB)\t%.2f×\t≤256 MiB\t%s: %.0f MiB %s 256 MiB (%.0f MiB %s)",
      x / 1024, xw / 1024, b / 1024, bw / 1024, r, ok, x / 1024, (x <= 262144 ? "≤" : ">"), (x <= 262144 ? 262144 - x : x - 262144) / 1024, (x <= 262144 ? "under" : "over") }')
  rows+=("$rss_row")
else
  add_na "peak RSS, large context" "n/a: /usr/bin/time missing"
fi

# ---------------------------------------------------------------- micro

if [ "$micro" = 1 ]; then
  log "micro-benchmarks: cargo bench -p xbuild-engine --bench hot_paths (${micro_mb} MB of data)"
  mdata=$work/micro
  rm -rf "$target_dir/criterion/hash" "$target_dir/criterion/layer"
  XBUILD_BENCH_DATA=$mdata XBUILD_BENCH_MB=$micro_mb CARGO_TARGET_DIR=$target_dir \
    cargo bench --locked -p xbuild-engine --bench hot_paths >"$work/logs/criterion.log" 2>&1 ||
    { tail -n 40 "$work/logs/criterion.log" >&2; exit 1; }
  mbytes=$(bytes_of "$mdata/tree")
  # MB/s (10^6) of a criterion benchmark from its median estimate.
  crit() {
    local f=$target_dir/criterion/$1/new/estimates.json
    [ -f "$f" ] || { echo NA; return; }
    jq -r --argjson b "$mbytes" '$b / .median.point_estimate * 1000' "$f" | awk '{ printf "%.0f", $1 }'
  }
  # Peers on the same data, page cache warm, median of $runs.
  mbs() { awk -v b="$mbytes" -v t="$(median "$1")" 'BEGIN { if (t == "NA") print "NA"; else printf "%.0f", b / t / 1e6 }'; }
  (cd "$mdata/tree" && find . -type f -print0 | xargs -0 cat >/dev/null)
  for _ in $(seq "$runs"); do
    t_run p-sha256sum sh -c 'cd "$1" && find . -type f -print0 | xargs -0 sha256sum >/dev/null' _ "$mdata/tree"
    t_run p-gzip sh -c 'tar -C "$1" -cf - . | gzip -1 >/dev/null' _ "$mdata/tree"
    t_run p-tar sh -c 'tar -C "$1" -cf - . | cat >/dev/null' _ "$mdata/tree"
    if command -v openssl >/dev/null 2>&1; then
      t_run p-openssl sh -c 'cd "$1" && find . -type f -print0 | xargs -0 cat | openssl dgst -sha256 >/dev/null' _ "$mdata/tree"
    fi
    if [ "$have_pigz" = 1 ]; then
      t_run p-pigz sh -c 'tar -C "$1" -cf - . | pigz -1 >/dev/null' _ "$mdata/tree"
    fi
  done
  tar -C "$mdata/tree" -cf - . | gzip -1 >"$work/layer.tgz"
  for _ in $(seq "$runs"); do
    rm -rf "$work/untar" && mkdir "$work/untar"
    t_run p-untar sh -c 'gzip -dc "$1" | tar -C "$2" -xf -' _ "$work/layer.tgz" "$work/untar"
  done
  rm -rf "$work/untar"
  add_thrpt "context hashing, 1 thread (scan)" "$(crit hash/scan_1_thread)" "sha256sum" "$(mbs "$work/t/p-sha256sum")" 0.8
  if [ -s "$work/t/p-openssl" ]; then
    add_thrpt "context hashing, 1 thread (scan)" "$(crit hash/scan_1_thread)" "cat \\| openssl dgst -sha256" "$(mbs "$work/t/p-openssl")" ""
  fi
  add_thrpt "context hashing, all cores (scan)" "$(crit hash/scan_all_threads)" "sha256sum" "$(mbs "$work/t/p-sha256sum")" ""
  # "Scaling to two" cores: here at least 1.5× the one-thread throughput.
  scale_goal=
  [ "$(nproc)" -lt 2 ] || scale_goal=1.5
  add_thrpt "context hashing, all $(nproc) cores vs 1 thread (scaling)" "$(crit hash/scan_all_threads)" \
    "xbuild, 1 thread" "$(crit hash/scan_1_thread)" "$scale_goal"
  add_thrpt "layer tar+gzip -1 (write_layer)" "$(crit layer/write_gzip1)" "tar \\| gzip -1" "$(mbs "$work/t/p-gzip")" ""
  if [ "$have_pigz" = 1 ]; then
    add_thrpt "layer tar+gzip -1 (write_layer)" "$(crit layer/write_gzip1)" "tar \\| pigz -1" "$(mbs "$work/t/p-pigz")" 1.0
  else
    micro_rows+=("layer tar+gzip -1 (write_layer)${tab}n/a${tab}n/a: pigz not installed$tab$tab≥1.0×$tab")
  fi
  add_thrpt "layer tar only (write_layer, no compression)" "$(crit layer/write_tar)" "tar \\| cat" "$(mbs "$work/t/p-tar")" ""
  add_thrpt "layer apply, gzip (apply_layer)" "$(crit layer/apply_gzip1)" "gzip -dc \\| tar -x" "$(mbs "$work/t/p-untar")" ""
  warm_scan=NA
  if [ -f "$target_dir/criterion/hash/scan_warm_cache/new/estimates.json" ]; then
    warm_scan=$(jq -r '.median.point_estimate / 1e6' "$target_dir/criterion/hash/scan_warm_cache/new/estimates.json" | awk '{ printf "%.1f", $1 }')
  fi
fi

# ---------------------------------------------------------------- report

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
[ -n "$cpu_model" ] || cpu_model=$(lscpu 2>/dev/null | awk -F': +' '/Model name/ { print $2; exit }')
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit (+ uncommitted changes)"; fi
os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
fs=$(df -T "$work" | awk 'NR == 2 { print $2 }')
virt=$(lscpu 2>/dev/null | awk -F': +' '/Hypervisor vendor/ { print $2; exit }')
cpu_id=$(lscpu 2>/dev/null | awk -F': +' '/^CPU family/ { f = $2 } /^Model:/ { m = $2 } END { if (f != "") printf "family %s model %s", f, m }')
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
ssh_version=$(ssh -V 2>&1 | sed 's/,.*//')
# The targets passed and missed, for a one-line summary.
n_pass=0
n_miss=0
for r in "${rows[@]}" "${micro_rows[@]}"; do
  case $r in *"${tab}PASS:"*) n_pass=$((n_pass + 1)) ;; *"${tab}MISS:"*) n_miss=$((n_miss + 1)) ;; esac
done

report=$work/report.md
# Workloads left out (XBUILD_BENCH_ONLY) are described with zeros.
: "${large_files:=0}" "${large_bytes:=0}"
{
  echo "<!-- bench:begin (generated by scripts/bench.sh; edit outside the markers) -->"
  echo
  echo "Measured $(date -u +%Y-%m-%d) with \`scripts/bench.sh\`$([ "$quick" = 1 ] && echo " (**quick mode**)"), $runs runs per cell, medians."
  echo
  echo "| machine | |"
  echo "|---|---|"
  echo "| CPU | $cpu_model${cpu_id:+ ($cpu_id)}, $(nproc) cores${virt:+, virtual machine ($virt)} |"
  echo "| load average (1, 5, 15 min) | $load_start when the run started, $load_end when it ended; the start value is other jobs on the machine |"
  echo "| memory | $mem |"
  echo "| kernel | $(uname -r) ($os) |"
  echo "| file system of the work dirs | $fs |"
  echo "| xbuild | commit $commit, $bin_kind |"
  echo "| buildah | $(buildah --version | sed 's/ (.*//') (vfs storage, chroot isolation, \`--layers\`) |"
  echo "| QEMU | $(qemu-aarch64-static --version | head -n 1) |"
  echo "| SSH node | $ssh_version \`sshd\` on 127.0.0.2, started by the script: this machine |"
  echo "| whole run, after the release build | $(((SECONDS - t_measure) / 60)) min $(((SECONDS - t_measure) % 60)) s |"
  echo
  echo "Workloads: small = busybox base, ARG, RUN, COPY of 50 files, CMD, built for"
  echo "linux/amd64 and linux/arm64 in one command (buildah: \`bud --platform"
  echo "linux/amd64,linux/arm64 --manifest NAME\`); large = $large_files files, $((large_bytes / 1000000)) MB"
  echo "(half log-like text, half random), \`COPY . /ctx/\`, linux/amd64; cpu = one RUN"
  echo "of $cpu_loops iterations of a busybox \`sh\` loop (the SSH node rows: the same"
  echo "build with linux/amd64 scheduled on a node that is an \`sshd\` on 127.0.0.2 of"
  echo "this machine; buildah has no nodes, so its cell there is its local build);"
  echo "cross = a \`FROM --platform=\$BUILDPLATFORM\` stage whose compile step (the cpu"
  echo "loop) does not depend on the target, then \`ARG TARGETARCH\` and a per-target"
  echo "step, copied into a target stage; cold, for 1 and for 2 targets;"
  echo "push = the small image pushed"
  echo "to a registry on loopback (both tools: build with every step cached + push)."
  echo "Cold = new, empty state (\`XBUILD_ROOT\` / buildah \`--root\`), the base image"
  echo "pulled from the local registry; warm = the same state again. Wall-clock"
  echo "seconds; ratios are xbuild/buildah, lower is better; MB = 10^6 bytes."
  echo
  echo "| workload | xbuild | buildah | ratio | target | result / note |"
  echo "|---|---|---|---|---|---|"
  for r in "${rows[@]}"; do echo "| ${r//$tab/ | } |"; done
  echo
  if want large; then
  awk -v x="$x_layer" -v g="$gz_layer" -v p="$pz_layer" -v u="$large_bytes" 'BEGIN {
    printf "The large layer compresses to %.1f MB with xbuild (gzip level 1), %.1f MB with\n", x / 1e6, g / 1e6
    printf "`tar | gzip -1`%s, from %.0f MB of files.\n", (p == "NA" ? "" : sprintf(" and %.1f MB with `tar | pigz -1`", p / 1e6)), u / 1e6 }'
  fi
  if [ "$micro" = 1 ]; then
    echo
    echo "Micro-benchmarks (\`cargo bench -p xbuild-engine --bench hot_paths\`, criterion"
    echo "median) on $((mbytes / 1000000)) MB in $(find "$mdata/tree" -type f | wc -l) files (half text, half random), page"
    echo "cache warm; the peers run on the same files. MB/s of file content; ratio ="
    echo "xbuild/peer, higher is better. Rescanning the unchanged tree with a warm"
    echo "hash cache (metadata only, 1 thread) takes $warm_scan ms."
    echo
    echo "| hot path | xbuild | peer | ratio | target | result |"
    echo "|---|---|---|---|---|---|"
    for r in "${micro_rows[@]}"; do echo "| ${r//$tab/ | } |"; done
  fi
  echo
  echo "Targets: $n_pass passed, $n_miss missed."
  echo
  echo "<!-- bench:end -->"
} >"$report"

echo
cat "$report"
mkdir -p "$(dirname "$out")"
if [ -f "$out" ] && grep -q '^<!-- bench:begin' "$out" && grep -q '^<!-- bench:end' "$out"; then
  awk -v rep="$report" '
    /^<!-- bench:begin/ { while ((getline l < rep) > 0) print l; skip = 1; next }
    /^<!-- bench:end/ { skip = 0; next }
    !skip { print }' "$out" >"$out.tmp"
  mv "$out.tmp" "$out"
else
  { echo "# Benchmarks: xbuild and buildah side by side"; echo; cat "$report"; } >"$out"
fi
log "report written to $out"
