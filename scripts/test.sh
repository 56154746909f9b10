#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration/conformance
# tests, end-to-end tests and a bounded fuzz run. This is what CI runs.
#   XBUILD_SKIP_SETUP=1   skip package installation
#   XBUILD_FUZZ_SECONDS=N seconds per fuzz target (default 20; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "${XBUILD_SKIP_SETUP:-0}" != 1 ]; then
  scripts/setup.sh
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if [ "$(id -u)" = 0 ]; then
  # The QEMU tests need the arm64 handler; e2e tests register it too, but
  # engine tests running first would otherwise skip.
  log "registering QEMU for arm64 (xbuild binfmt install)"
  cargo run --locked -q -p xbuild -- binfmt install linux/arm64
fi

log "tests (cargo nextest)"
cargo nextest run --workspace --locked --no-fail-fast

log "conformance"
scripts/conformance.sh

if [ "${XBUILD_FUZZ_SECONDS:-20}" != 0 ]; then
  log "fuzz (bounded)"
  scripts/fuzz.sh "${XBUILD_FUZZ_SECONDS:-20}"
fi
log "all tests passed"
