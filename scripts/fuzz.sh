#!/usr/bin/env bash
# Bounded fuzzing of the parsers with cargo-fuzz (libFuzzer).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
# libFuzzer instrumentation needs unstable flags: use a nightly toolchain when
# rustup has one, else let the pinned stable compiler accept them.
if rustup toolchain list | grep -q '^nightly'; then
  tc=(+nightly)
else
  tc=()
  export RUSTC_BOOTSTRAP=1
fi
targets=$(cd fuzz && cargo "${tc[@]}" fuzz list)
for t in $targets; do
  echo "==> fuzz $t for ${secs}s" >&2
  mkdir -p "fuzz/corpus/$t"
  (cd fuzz && cargo "${tc[@]}" fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 2>&1 | tail -n 3)
done
