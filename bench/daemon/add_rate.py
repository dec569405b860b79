#!/usr/bin/python3
"""torrent-add rate: N small torrents (data in place) added one request at
a time through the Transmission RPC on 127.0.0.1, into a fresh
`actorrent daemon` and, when installed, a fresh `transmission-daemon`,
--runs times each (alternating); prints the median adds per second per
daemon and their ratio. With --strace, one more actorrent run under
`strace -c -f` gives the syscalls per add (fsync, fdatasync, rename,
openat).

`nice -n 10 /usr/bin/python3 bench/daemon/add_rate.py --torrents 500
--runs 3 [--baseline OTHER-BINARY]` after `cargo build --release`
(`--baseline` adds a second actorrent build to the same alternation;
transmission-daemon is Debian's package of that name). Method and numbers:
docs/benchmarks.md ("Daemon torrent-add rate").
"""

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/daemon/run.py: torrents, RPC client, daemons)


def one_run(d, metas, paused):
    rpc = d.start()
    rpc.wait_up()
    t0 = time.time()
    for m in metas:
        v, _ = rpc.call("torrent-add", {"metainfo": base64.b64encode(m).decode(), "paused": paused})
        assert v["result"] == "success", v
    rate = len(metas) / (time.time() - t0)
    d.stop()
    return rate


def strace_counts(binary, work, dl, metas, paused):
    d = run.Actorrent(work, dl, binary)
    rpc = d.start()
    rpc.wait_up()
    out = os.path.join(work, "strace.txt")
    st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(d.p.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    for m in metas:
        rpc.call("torrent-add", {"metainfo": base64.b64encode(m).decode(), "paused": paused})
    time.sleep(1)
    st.send_signal(2)
    st.wait(timeout=60)
    d.stop()
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync", "rename", "openat", "write"):
                counts[parts[-1]] = int(parts[3])
    return {k: v / len(metas) for k, v in counts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torrents", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--paused", action="store_true", help="add paused (no check, no start)")
    ap.add_argument("--binary", default=os.path.join(run.ROOT, "target", "release", "actorrent"))
    ap.add_argument("--baseline", help="another actorrent binary, measured in the same run")
    ap.add_argument("--no-transmission", action="store_true")
    ap.add_argument("--strace", action="store_true")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="daemon-add-bench-")
    try:
        dl = os.path.join(base, "dl")
        os.makedirs(dl)
        metas = run.make_torrents(a.torrents, dl, a.size, 16 * 1024)
        names = ["actorrent"]
        binaries = {"actorrent": a.binary}
        if a.baseline:
            names.append("actorrent baseline")
            binaries["actorrent baseline"] = a.baseline
        if not a.no_transmission and shutil.which("transmission-daemon"):
            names.append("transmission-daemon")
        rates = {n: [] for n in names}
        for i in range(a.runs):
            for n in names:
                work = os.path.join(base, "%s-%d" % (n.replace(" ", "-"), i))
                os.makedirs(work)
                if n in binaries:
                    d = run.Actorrent(work, dl, binaries[n])
                else:
                    d = run.Transmission(work, dl)
                rates[n].append(one_run(d, metas, a.paused))
        print("%d torrents of %d KiB%s, %d runs, adds per second (median; all runs)"
              % (a.torrents, a.size // 1024, " added paused" if a.paused else "", a.runs))
        for n in names:
            print("%-20s %8.1f   %s" % (n, statistics.median(rates[n]),
                                      " ".join("%.1f" % r for r in rates[n])))
        ours = statistics.median(rates["actorrent"])
        for n in names[1:]:
            print("%-20s %8.2f" % ("ratio %s/actorrent" % n, statistics.median(rates[n]) / ours))
        if a.strace:
            for n, b in binaries.items():
                work = os.path.join(base, "strace-" + n.replace(" ", "-"))
                os.makedirs(work)
                c = strace_counts(b, work, dl, metas, a.paused)
                print("%s syscalls per add: %s" % (n, ", ".join("%s %.2f" % kv for kv in sorted(c.items()))))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
