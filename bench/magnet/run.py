#!/usr/bin/python3
"""Magnet link timing: from start to metadata and to complete, actorrent
against libtorrent fetching the same magnet link, from N `actorrent seed`
processes on 127.0.0.1 (given by x.pe / --peer: no tracker, no DHT).

  bench/magnet/run.py --actorrent target/release/actorrent [--size-mib 64]
                      [--files 200] [--seeds 1] [--runs 3]

Prints one line per run and the medians. actorrent's times run from the
process start, libtorrent's from its session's start (its `PORT` line), so
Python's start-up is not counted against it. The payload is many files, so the
info dictionary spans several 16 KiB metadata pieces.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LT = os.path.join(HERE, "..", "..", "tests", "support", "lt_peer.py")
ENV = dict(os.environ, ACTORRENT_DHT_ENABLED="false", RUST_LOG="warn")


def make(tmp, size_mib, files):
    root = os.path.join(tmp, "data", "payload")
    os.makedirs(root)
    per = size_mib * 1024 * 1024 // files
    for i in range(files):
        with open(os.path.join(root, f"file-with-a-long-name-{i:05}.bin"), "wb") as f:
            f.write(os.urandom(per))
    torrent = os.path.join(tmp, "p.torrent")
    out = subprocess.run(
        ["/usr/bin/python3", LT, "make", "--data", root, "--piece-size", str(256 * 1024),
         "--out", torrent], check=True, capture_output=True, text=True).stdout
    info_hash = out.split()[1]
    return torrent, info_hash


def seed(a, torrent, tmp):
    p = subprocess.Popen(
        [a.actorrent, "seed", torrent, "--data", os.path.join(tmp, "data"), "--listen",
         "127.0.0.1:0", "--no-dht", "--stats-json", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    for line in p.stdout:
        v = json.loads(line)
        if v.get("state") == "seeding" and v.get("listen_port"):
            return p, v["listen_port"]
    raise SystemExit("seed did not start")


def run_actorrent(a, magnet, out):
    t0 = time.monotonic()
    p = subprocess.Popen(
        [a.actorrent, "download", magnet, "--output", out, "--no-dht", "--stats-json", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    meta = None
    for line in p.stdout:
        v = json.loads(line)
        if meta is None and v.get("event") == "metadata":
            meta = time.monotonic() - t0
    if p.wait() != 0:
        raise SystemExit("actorrent download failed")
    return meta, time.monotonic() - t0


def run_lt(magnet, peers, out):
    t0 = time.monotonic()
    args = ["/usr/bin/python3", LT, "leech", "--magnet", magnet, "--save-path", out,
            "--timeout", "300"]
    for p in peers:
        args += ["--peer", f"127.0.0.1:{p}"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    meta = None
    for line in p.stdout:
        # From the session's start (PORT), not Python's: the interpreter
        # and libtorrent's import take a second or more.
        if line.startswith("PORT "):
            t0 = time.monotonic()
        if line.startswith("METADATA") and meta is None:
            meta = time.monotonic() - t0
    if p.wait() != 0:
        raise SystemExit("libtorrent leech failed")
    return meta, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actorrent", required=True)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torrent, info_hash = make(tmp, a.size_mib, a.files)
        seeds = [seed(a, torrent, tmp) for _ in range(a.seeds)]
        ports = [port for _, port in seeds]
        magnet = f"magnet:?xt=urn:btih:{info_hash}" + "".join(
            f"&x.pe=127.0.0.1:{p}" for p in ports)
        results = {"actorrent": [], "libtorrent": []}
        try:
            for r in range(a.runs):
                for name in ("actorrent", "libtorrent"):
                    out = os.path.join(tmp, f"out-{name}-{r}")
                    m, d = run_actorrent(a, magnet, out) if name == "actorrent" else run_lt(
                        magnet, ports, out)
                    results[name].append((m, d))
                    print(f"run {r} {name}: metadata {m:.3f} s, complete {d:.3f} s", flush=True)
        finally:
            for p, _ in seeds:
                p.terminate()
                p.wait()
        for name, rs in results.items():
            print(f"median {name}: metadata {statistics.median(m for m, _ in rs):.3f} s, "
                  f"complete {statistics.median(d for _, d in rs):.3f} s")


if __name__ == "__main__":
    sys.exit(main())
