#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans
# (duplicate versions are warnings) and sources, all offline.
#
# Not part of scripts/test.sh: `cargo install --locked cargo-deny` from
# crates.io took 13m22s on the 2-core CI machine (measured; the limit for
# test.sh was 4 minutes). Run it on its own, or install cargo-deny once on
# the CI image.
#
# Advisories (`cargo deny check advisories`, `cargo audit`) need the RustSec
# database from GitHub, which these machines cannot reach: they run only
# with XBUILD_AUDIT_ADVISORIES=1, on a machine that can.
#   CARGO_DENY=PATH              use this cargo-deny binary
#   XBUILD_AUDIT_ADVISORIES=1    also check advisories
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

deny="${CARGO_DENY:-}"
if [ -z "$deny" ]; then
  if command -v cargo-deny >/dev/null 2>&1; then
    deny=cargo-deny
  else
    log "installing cargo-deny (slow: about 13 minutes on 2 cores)"
    cargo install --locked cargo-deny
    deny=cargo-deny
  fi
fi

log "cargo deny check licenses bans sources"
"$deny" check licenses bans sources

if [ "${XBUILD_AUDIT_ADVISORIES:-0}" = 1 ]; then
  log "cargo deny check advisories (needs GitHub)"
  "$deny" check advisories
fi
log "supply-chain checks passed"
