#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly. Long fuzzing runs are
# for a developer's machine: `scripts/fuzz-smoke.sh 600` fuzzes each target for
# ten minutes. The toolchain is stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass
# the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
    echo "fuzz smoke: $target for ${secs}s"
    cargo fuzz run -O "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
done
