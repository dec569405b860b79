#!/usr/bin/python3
"""O_DIRECT vs the page cache for a raw target: actorrent downloads a raw
torrent (one extent, 256 KiB pieces) from a libtorrent seed on loopback into
a loop device over a file on the real disk, with and without --direct-io,
runs interleaved, medians reported.

The loop device is set up with `losetup --direct-io=on`, so the loop driver
itself does not cache the backing file: what `Buffers` in /proc/meminfo
(a block device's page cache is counted there, not in `Cached`) gains
during a run is then what actorrent's writes left in the cache. Before each run the device's buffers are
flushed (`blockdev --flushbufs`) so every run starts from the same cache.

Per run: wall seconds of the download process, CPU seconds (user + system,
from wait4) per GiB, its peak RSS, and the growth of Buffers and Cached
(highest value sampled every 20 ms while it runs minus the value before
it started; Cached moves with whatever else runs on the machine). Needs root (losetup) and
/usr/bin/python3 with python3-libtorrent.

  sudo bench/direct/run.py [--size-mib 1024] [--runs 3] [--workdir /var/tmp]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LT_PEER = os.path.join(REPO, "tests", "support", "lt_peer.py")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def meminfo_kib():
    """Buffers (a block device's page cache) and Cached, in KiB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out["Buffers"], out["Cached"]


def run_once(actorrent, torrent, dev, peer_port, work, direct, i):
    subprocess.run(["blockdev", "--flushbufs", dev], check=True)
    resume = os.path.join(work, f"resume-{i}-{int(direct)}")
    cmd = [actorrent, "download", torrent, "--raw-target", dev, "--resume-file", resume,
           "--no-dht", "--listen", "127.0.0.1:0", "--peer", f"127.0.0.1:{peer_port}"]
    if direct:
        cmd.append("--direct-io")
    before = meminfo_kib()
    t0 = time.monotonic()
    with open(os.path.join(work, f"dl-{i}-{int(direct)}.log"), "wb") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        # Sampled while it runs: the kernel drops a block device's cache
        # when its last descriptor closes, so after exit there is nothing
        # left to see.
        peak = list(before)
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            now = meminfo_kib()
            peak = [max(a, b) for a, b in zip(peak, now)]
            time.sleep(0.02)
    wall = time.monotonic() - t0
    after = peak
    if status != 0:
        raise SystemExit(f"download failed ({status}); see {err.name}")
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss_mib": ru.ru_maxrss / 1024,
        "buffers_growth_mib": (after[0] - before[0]) / 1024,
        "cached_growth_mib": (after[1] - before[1]) / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp", help="on the real disk, not tmpfs")
    ap.add_argument("--actorrent", default=os.path.join(REPO, "target", "release", "actorrent"))
    ap.add_argument("--json", help="also write every number here")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="actorrent-direct-", dir=a.workdir)
    size = a.size_mib << 20
    dev = None
    seed = None
    try:
        src = os.path.join(work, "src.img")
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        torrent = os.path.join(work, "src.torrent")
        subprocess.run([a.actorrent, "create", "--raw", src, "-o", torrent, "--piece-size", "256K"],
                       check=True, stdout=subprocess.DEVNULL)
        info = json.loads(subprocess.run([a.actorrent, "info", "--json", torrent], check=True,
                                         capture_output=True).stdout)
        assert len(info["files"]) == 1, info["files"]
        save = os.path.join(work, "seed")
        os.makedirs(os.path.join(save, info["name"]))
        os.link(src, os.path.join(save, info["name"], *info["files"][0]["path"]))
        backing = os.path.join(work, "backing")
        with open(backing, "wb") as f:
            f.truncate(size)
        subprocess.run(["fallocate", "-l", str(size), backing], check=True)
        dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", backing], check=True,
                             capture_output=True, text=True).stdout.strip()
        seed = subprocess.Popen(
            ["/usr/bin/python3", LT_PEER, "seed", "--torrent", torrent, "--save-path", save,
             "--timeout", "3600"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = seed.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise SystemExit(f"seed failed: {line!r}")
        port = int(line.split()[1])
        results = {"page_cache": [], "direct": []}
        for i in range(a.runs):
            for direct in (False, True):
                r = run_once(a.actorrent, torrent, dev, port, work, direct, i)
                results["direct" if direct else "page_cache"].append(r)
                log(("direct" if direct else "page cache"), i, r)
        with open(dev, "rb") as d, open(src, "rb") as s:
            # The last run (O_DIRECT) must have left the payload on the device.
            while True:
                x, y = s.read(1 << 20), d.read(1 << 20)
                if not x:
                    break
                if x != y:
                    raise SystemExit("device bytes differ from the source")
        gib = size / (1 << 30)
        print(f"load average at the end: {os.getloadavg()}")
        print("| mode | wall s | CPU s/GiB | peak RSS MiB | Buffers growth MiB | Cached growth MiB |")
        print("|---|---|---|---|---|---|")
        for mode, rs in results.items():
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"| {mode} | {med('wall_s'):.2f} | {med('cpu_s') / gib:.2f} | "
                  f"{med('peak_rss_mib'):.0f} | {med('buffers_growth_mib'):.0f} | "
                  f"{med('cached_growth_mib'):.0f} |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"size_mib": a.size_mib, "load": os.getloadavg(), "runs": results}, f, indent=1)
    finally:
        if seed:
            seed.stdin.close()
            try:
                seed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                seed.kill()
                seed.wait()
        if dev:
            subprocess.run(["losetup", "-d", dev])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
