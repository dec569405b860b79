#!/usr/bin/python3
"""Streaming benchmark: time to the first byte and to the first 10 MiB of a
stream started in the middle of a 1 GiB file, while the torrent downloads,
for `actorrent download --stream` and (when installed) `rqbit download`'s
HTTP API, from the same libtorrent seed on loopback.

Each run starts a fresh client with an empty output directory, waits until
its stream URL answers (actorrent: the `stream_urls` of its first stats
line; rqbit: its torrent appears in `GET /torrents`), then at once sends
`GET <url>` with `Range: bytes=<512 MiB>-` and reads 10 MiB. Reported, per
client, medians of --runs:

  ttfb s      request sent to first body byte
  10 MiB s    request sent to the 10 MiB-th body byte
  ready s     client spawned to its stream URL answering (start-up)

The bytes read are compared with the source file. The seed may be rate
limited (--seed-rate MiB/s; libtorrent's upload_rate_limit, applied on
loopback too), so the numbers show how fast each client turns a seek into
the pieces under the reader, not how fast loopback is. Clients are killed
after the 10 MiB: the rest of the download is not measured.

Run with /usr/bin/python3 (the seed needs python3-libtorrent), after
`cargo build --release`.
"""

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LT = os.path.join(ROOT, "tests", "support", "lt_peer.py")
MIB = 1 << 20


def download_bench():
    """bench/download/run.py, for its payload and torrent maker."""
    spec = importlib.util.spec_from_file_location(
        "download_bench", os.path.join(ROOT, "bench", "download", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def start_seed(torrent, data, rate):
    args = ["/usr/bin/python3", LT, "seed", "--torrent", torrent, "--save-path", data]
    args += ["--timeout", "3600"]
    if rate:
        args += ["--upload-limit", str(int(rate * MIB))]
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("PORT "):
            return p, int(line.split()[1])
    raise SystemExit("the libtorrent seed did not start")


def read_range(host, port, path, start, want, expect):
    c = http.client.HTTPConnection(host, port, timeout=120)
    t0 = time.monotonic()
    c.request("GET", path, headers={"Range": f"bytes={start}-"})
    r = c.getresponse()
    if r.status != 206:
        raise SystemExit(f"{path}: status {r.status}")
    got = bytearray()
    first = None
    while len(got) < want:
        b = r.read1(min(256 * 1024, want - len(got)))
        if not b:
            break
        if first is None:
            first = time.monotonic()
        got += b
    done = time.monotonic()
    c.close()
    if bytes(got) != expect:
        raise SystemExit(f"{path}: the bytes read differ from the source")
    return first - t0, done - t0


def run_actorrent(binary, torrent, out, peer, start, want, expect):
    t0 = time.monotonic()
    p = subprocess.Popen(
        [binary, "download", torrent, "--output", out, "--peer", peer,
         "--stream", "127.0.0.1:0", "--stats-json", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = json.loads(p.stdout.readline())
        url = line["stream_urls"][0]
        threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
        hostport, path = url[len("http://"):].split("/", 1)
        host, port = hostport.rsplit(":", 1)
        ready = time.monotonic() - t0
        ttfb, tmib = read_range(host, int(port), "/" + path, start, want, expect)
        return ready, ttfb, tmib
    finally:
        p.kill()
        p.wait()


def run_rqbit(torrent, out, peer, start, want, expect, port=17931):
    t0 = time.monotonic()
    p = subprocess.Popen(
        ["rqbit", "--disable-dht", "--disable-upnp-port-forward",
         "--http-api-listen-addr", f"127.0.0.1:{port}",
         "download", "--initial-peers", peer, "-o", out, torrent],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/torrents")
                body = json.loads(c.getresponse().read())
                c.close()
                if body.get("torrents"):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("rqbit's HTTP API did not come up")
            time.sleep(0.01)
        ready = time.monotonic() - t0
        ttfb, tmib = read_range("127.0.0.1", port, "/torrents/0/stream/0", start, want, expect)
        return ready, ttfb, tmib
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed-rate", type=float, default=0, help="MiB/s, 0 for unlimited")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "actorrent-bench-stream"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "actorrent"))
    a = ap.parse_args()
    size = a.size_mib * MIB
    seed_dir = os.path.join(a.work, "seed")
    src, torrent = download_bench().make_source(seed_dir, size, 256 * 1024)
    start, want = size // 2, 10 * MIB
    with open(src, "rb") as f:
        f.seek(start)
        expect = f.read(want)
    seed, port = start_seed(torrent, seed_dir, a.seed_rate)
    peer = f"127.0.0.1:{port}"
    clients = [("actorrent", lambda out: run_actorrent(a.binary, torrent, out, peer, start, want, expect))]
    if shutil.which("rqbit"):
        clients.append(("rqbit", lambda out: run_rqbit(torrent, out, peer, start, want, expect)))
    else:
        print("rqbit not installed: only actorrent is measured", file=sys.stderr)
    results = {name: [] for name, _ in clients}
    try:
        for i in range(a.runs):
            # Alternate who goes first, so neither always meets a warmer
            # page cache or a seed with idle rate-limit quota.
            for name, run in clients[i % 2:] + clients[:i % 2]:
                out = os.path.join(a.work, f"out-{name}")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                r = run(out)
                results[name].append(r)
                print(f"run {i + 1} {name}: ready {r[0]:.3f} s, ttfb {r[1]:.3f} s, "
                      f"10 MiB {r[2]:.3f} s", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        seed.stdin.close()
        seed.wait(timeout=30)
    rate = f"{a.seed_rate:g} MiB/s" if a.seed_rate else "unlimited"
    print(f"\n{a.size_mib} MiB file, stream from the middle, seed {rate}, medians of {a.runs}\n")
    print("| client | ttfb s | first 10 MiB s | ready s |")
    print("|---|---:|---:|---:|")
    for name, rs in results.items():
        med = [statistics.median(x[k] for x in rs) for k in range(3)]
        print(f"| {name} | {med[1]:.3f} | {med[2]:.3f} | {med[0]:.3f} |")


if __name__ == "__main__":
    main()
