#!/usr/bin/env bash
# The README's first command: set up a fresh Debian machine (as root) and run
# a real multi-platform build: QEMU registered through binfmt_misc, a
# registry on 127.0.0.1, busybox base images for amd64 and arm64, the
# example app built for both and pushed as one index, the index shown, both
# images run, and a rebuild served from the cache.
#   XBUILD_DEMO_PORT=N   registry port (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

scripts/setup.sh
log "building xbuild"
cargo build --release --locked -p xbuild -p xbuild-testbed
xb=$PWD/target/release/xbuild
platforms=linux/amd64,linux/arm64
port=${XBUILD_DEMO_PORT:-5000}
work=$(mktemp -d /tmp/xbuild-demo.XXXXXX)
export XBUILD_ROOT=$work/state

log "registering QEMU for linux/arm64 in binfmt_misc"
$xb binfmt install linux/arm64
$xb binfmt status

log "starting a registry on 127.0.0.1:$port"
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
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
cleanup() { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  if ! kill -0 "$registry_pid" 2>/dev/null; then
    echo "the registry did not start (is port $port taken? set XBUILD_DEMO_PORT):" >&2
    cat "$work/registry.log" >&2
    exit 1
  fi
  sleep 0.1
done
reg=127.0.0.1:$port

log "building the busybox base image for $platforms"
target/release/xbuild-testbed base-context "$work/base" amd64 arm64 >/dev/null
$xb build --progress plain --platform "$platforms" -t "$reg/xbuild/busybox:latest" --push "$work/base"

log "building examples/hello for $platforms and pushing it"
$xb build --progress plain --platform "$platforms" \
  --build-arg "BASE=$reg/xbuild/busybox:latest" \
  -t "$reg/demo/hello:1.0" --push --metadata-file "$work/metadata.json" examples/hello

log "the index in the registry, as skopeo sees it"
skopeo inspect --raw --tls-verify=false "docker://$reg/demo/hello:1.0" | jq .
log "the same through xbuild imagetools"
$xb imagetools inspect "$reg/demo/hello:1.0"

for arch in amd64 arm64; do
  log "running the $arch image with buildah (chroot isolation)"
  b=(buildah --root "$work/buildah/root" --runroot "$work/buildah/run" --storage-driver vfs)
  ctr=$("${b[@]}" from -q --tls-verify=false --arch "$arch" "docker://$reg/demo/hello:1.0")
  "${b[@]}" run --isolation chroot "$ctr" -- sh -c 'echo "hello from $(cat /arch)"; cat /app/info.txt /app/greeting.txt'
  "${b[@]}" rm "$ctr" >/dev/null
done

log "rebuilding: every step comes from the cache, the digest is unchanged"
$xb build --progress plain --platform "$platforms" \
  --build-arg "BASE=$reg/xbuild/busybox:latest" \
  -t "$reg/demo/hello:1.0" --push examples/hello 2>&1 | grep -E 'CACHED|image digest|PLATFORM|linux/' | tail -n 6

log "done: state in $work (remove it when finished)"
