#!/usr/bin/env bash
# Run the third-party conformance sets (../shared/conformance) and print
# `conformance <set>: N/M` for each.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${XBUILD_CONFORMANCE_DIR:-$(cd .. && pwd)/shared/conformance}"
if [ ! -d "$dir" ]; then
  echo "conformance data not found at $dir (set XBUILD_CONFORMANCE_DIR)" >&2
  exit 1
fi
(cd "$dir" && sha256sum --quiet -c MANIFEST.sha256) || { echo "conformance data at $dir is damaged" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
XBUILD_CONFORMANCE_DIR="$dir" cargo test --locked -p xbuild-dockerfile \
  --test conformance_parser --test conformance_shell --test conformance_ignore \
  -- --nocapture --test-threads=1 >"$out" 2>&1 || status=$?
grep -oE 'conformance [^ ]+: [0-9]+/[0-9]+' "$out" | sort
if [ "$status" -ne 0 ]; then
  cat "$out" >&2
  echo "conformance: FAILED" >&2
  exit "$status"
fi
