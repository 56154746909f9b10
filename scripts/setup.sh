#!/usr/bin/env bash
# Install everything xbuild's build, tests, demo and benchmarks need on a
# fresh Debian machine (run as root). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

PACKAGES=(
  build-essential pkg-config git ca-certificates curl jq tmux
  busybox-static          # root filesystems of the test base images
  qemu-user-static        # foreign-architecture RUN through binfmt_misc
  docker-registry         # CNCF distribution, the registry the e2e tests push to
  apache2-utils           # htpasswd, for the authenticated registry
  skopeo buildah          # third-party clients that check what xbuild produces
  openssh-server openssh-client   # remote build nodes on loopback
  hyperfine               # benchmarks
  passt                   # pasta: the network namespace of RUN steps (outbound only)
  libseccomp-dev          # links the seccomp filter of RUN steps (libseccomp crate)
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross   # static arm64 helper of the isolation e2e test
  python3-pip             # installs spdx-tools and jsonschema (attestation validators)
  golang-go binutils      # a real Go binary and objcopy for the SBOM scanner tests
)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh must run as root (it installs Debian packages)" >&2
  exit 1
fi

# The arm64 busybox-static used for the arm64 test base image comes from
# Debian's arm64 archive; apt needs to know the architecture.
need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding the arm64 architecture to dpkg"
  dpkg --add-architecture arm64
  need_update=1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "$need_update" = 1 ]; then
  log "apt-get update"
  apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The registry package starts a system service on :5000 on some setups; the
# tests start their own instances on loopback ports instead.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true

# Rust: the toolchain pinned in rust-toolchain.toml. When rustup does not
# have it under that name but the stable toolchain is that version, link it
# (no download needed, none is possible offline).
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^${want}"; then
  have=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
  if [ "$have" = "$want" ]; then
    log "linking rustup toolchain $want to stable"
    rustup toolchain link "$want" "$(rustup run stable rustc --print sysroot)"
  else
    log "installing Rust $want"
    rustup toolchain install "$want" --profile minimal -c rustfmt -c clippy
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# Third-party validators of the attestations: pyspdxtools (spdx-tools) for
# the SPDX SBOMs, jsonschema for the in-toto / SLSA provenance.
if ! command -v pyspdxtools >/dev/null 2>&1 || ! python3 -c 'import jsonschema' 2>/dev/null; then
  log "installing spdx-tools and jsonschema from PyPI"
  python3 -m pip install -q --break-system-packages spdx-tools jsonschema 2>/dev/null \
    || python3 -m pip install -q spdx-tools jsonschema
fi
# A real `cargo auditable` build for the Rust SBOM scanner test.
if ! cargo auditable --version >/dev/null 2>&1; then
  log "installing cargo-auditable"
  cargo install --locked cargo-auditable
fi
log "setup complete"
