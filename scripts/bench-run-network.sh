#!/usr/bin/env bash
# Measures what the default RUN network (own namespace + pasta) costs:
# per step (RUN true, 10 steps, --no-cache) and for one download (64 MiB
# over HTTP), against --network=host and --network=none.
#
# Everything runs inside a network namespace this script makes (a veth
# pair with 198.51.100.1 and .2, documentation addresses): the HTTP server
# listens on 198.51.100.2 there, so no traffic leaves the machine.
# Needs root, busybox-static, pasta (passt) and hyperfine.
# Usage: scripts/bench-run-network.sh [path/to/xbuild]
set -euo pipefail
XBUILD=${1:-target/release/xbuild}
XBUILD=$(realpath "$XBUILD")
work=$(mktemp -d /var/tmp/xbuild-bench-net.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx" "$work/www"
cp /bin/busybox "$work/ctx/busybox"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/www/blob"
steps() {
  printf 'FROM scratch\nCOPY busybox /bin/busybox\n'
  for i in $(seq 1 10); do printf 'RUN %s ["/bin/busybox","true"]\n' "$1"; done
}
steps "" > "$work/ctx/steps.default"
steps "--network=host" > "$work/ctx/steps.host"
steps "--network=none" > "$work/ctx/steps.none"
dl() {
  printf 'FROM scratch\nCOPY busybox /bin/busybox\n'
  printf 'RUN %s ["/bin/busybox","sh","-c","/bin/busybox wget -q -O /dev/null http://198.51.100.2:8099/blob"]\n' "$1"
}
dl "" > "$work/ctx/dl.default"
dl "--network=host" > "$work/ctx/dl.host"

export XBUILD_ROOT="$work/root" XBUILD_CONFIG="$work/config.yaml" DOCKER_CONFIG="$work/docker"
unshare -n bash -s "$XBUILD" "$work" <<'INNER'
set -euo pipefail
XBUILD=$1 work=$2
ip link add v0 type veth peer name v1
ip addr add 198.51.100.1/24 dev v0
ip addr add 198.51.100.2/24 dev v1
ip link set lo up; ip link set v0 up; ip link set v1 up
ip route add default via 198.51.100.254 dev v0
busybox httpd -f -p 198.51.100.2:8099 -h "$work/www" & httpd=$!
trap 'kill $httpd' EXIT
b() { echo "$XBUILD build --progress quiet --no-cache --allow network.host -f $work/ctx/$1 -o type=local,dest=$work/out $work/ctx"; }
hyperfine --warmup 1 --runs 5 --export-markdown "$work/steps.md" \
  -n 'default (pasta)' "$(b steps.default)" \
  -n 'host' "$(b steps.host)" \
  -n 'none' "$(b steps.none)"
hyperfine --warmup 1 --runs 5 --export-markdown "$work/dl.md" \
  -n 'download, default (pasta)' "$(b dl.default)" \
  -n 'download, host' "$(b dl.host)"
cat "$work/steps.md" "$work/dl.md"
INNER
