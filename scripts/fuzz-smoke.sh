#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly, starting from its
# committed, minimised corpus (fuzz/corpus/<target>, read only: new inputs
# go to a temporary directory, so a run leaves the tree clean). Long
# fuzzing runs are for a developer's machine: `scripts/fuzz-smoke.sh 600`
# fuzzes each target for ten minutes; to grow a committed corpus, run
# `cargo fuzz run -O <target> fuzz/corpus/<target>` and then
# `cargo fuzz cmin -O <target> fuzz/corpus/<target>`. The toolchain is
# stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    echo "fuzz smoke: $target for ${secs}s"
    mkdir -p "$scratch/$target"
    seeds=()
    if [ -d "fuzz/corpus/$target" ]; then
        seeds=("fuzz/corpus/$target")
    fi
    cargo fuzz run -O "$target" "$scratch/$target" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
done
