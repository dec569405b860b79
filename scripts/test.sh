#!/usr/bin/env bash
# The one command that runs every test. On a fresh machine it first installs
# what the tests need: the real peers and tools they compare against
# (libtorrent's Python bindings, opentracker, mktorrent, transmission-create
# and transmission-remote, the Transmission web UI and Chromium, aria2,
# ffmpeg for ffprobe, microsocks as a SOCKS5 server)
# and cargo-fuzz for building the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || need+=(python3-libtorrent)
command -v opentracker >/dev/null || need+=(opentracker)
command -v mktorrent >/dev/null || need+=(mktorrent)
command -v transmission-create >/dev/null || need+=(transmission-cli)
command -v aria2c >/dev/null || need+=(aria2)
# The daemon's tests: transmission-remote drives it (transmission-cli), and
# headless Chromium loads the Transmission web UI (transmission-common).
command -v transmission-remote >/dev/null || need+=(transmission-cli)
ls /usr/share/transmission/*/index.html >/dev/null 2>&1 || need+=(transmission-common)
command -v chromium >/dev/null || need+=(chromium)
command -v ffprobe >/dev/null || need+=(ffmpeg)
# The swarm lab's short run (tests/lab.rs): namespaces, links and tc come
# with iproute2, the loss rule with nftables.
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
# tests/disk_full.rs: a small ext2 image on a loop device that fills up.
command -v mkfs.ext2 >/dev/null || need+=(e2fsprogs)
# tests/socks5.rs: a real SOCKS5 server.
command -v microsocks >/dev/null || need+=(microsocks)
# tests/magnet.rs: script(1) gives the client a terminal for its progress bar.
command -v script >/dev/null || need+=(bsdutils)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing test dependencies: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi

# Incremental caches only help a second build; on a fresh machine they
# double target/'s size. The disk line shows what each step leaves.
export CARGO_INCREMENTAL=0
disk() { echo "disk after $1: $(df -h --output=avail . | tail -1) free, target $(du -sh target 2>/dev/null | cut -f1), fuzz/target $(du -sh fuzz/target 2>/dev/null | cut -f1)"; }
disk "install"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Broken or private intra-doc links are errors too (module docs name the
# items they own; a renamed item must not leave a dead link).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
disk "clippy"
# Benchmarks are compiled (and linted) by clippy above; running them here
# would spend minutes measuring, which is bench/'s job, not the tests'.
# Every test binary runs even when one fails, so a log shows all failures.
cargo test --workspace --lib --bins --tests --no-fail-fast
disk "tests"

# Build every fuzz target and run each for a few seconds: a smoke test that
# the parsers of remote input survive a burst of hostile bytes.
scripts/fuzz-smoke.sh 5
disk "fuzz"
