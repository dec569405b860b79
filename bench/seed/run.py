#!/usr/bin/python3
"""Seed egress on loopback: actorrent seed vs libtorrent seed.

One seed of each kind serves the same payload to 1, 2, 4 and 8 libtorrent
leechers at once (each a fresh process with its own empty save directory),
alternating seeds within each run. For every trial it reports the seed's
total egress (payload bytes to all leechers / span from the first leecher's
start to the last one's finish) and the seed's CPU seconds per GiB served
(utime + stime from /proc/<pid>/stat before and after). For actorrent
seeds it also reports the serve turnaround (a request's arrival to its
block written to the socket): the seed runs with --metrics and
`actorrent_serve_turnaround_seconds` is scraped before and after each
trial, the difference of the two histograms giving the trial's median and
p99 (each the upper bound of the bucket it falls in). Prints a markdown
table of medians over --runs runs.

    cargo build --release
    /usr/bin/python3 bench/seed/run.py                # 512 MiB, 3 runs
    /usr/bin/python3 bench/seed/run.py --size-mib 256 --runs 5 --json out.json
    /usr/bin/python3 bench/seed/run.py --workdir /var/tmp --cold   # disk, cold cache

Use /usr/bin/python3 (python3-libtorrent). See README.md next to this file
for the settings and what the numbers mean.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import socket
import urllib.request

import libtorrent as lt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LT_PEER = os.path.join(ROOT, "tests", "support", "lt_peer.py")
TICK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def make_payload(workdir, size, piece):
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    path = os.path.join(data, "seedbench.bin")
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    fs = lt.file_storage()
    lt.add_files(fs, path)
    # v1 only: actorrent speaks BEP 3 (libtorrent 2 makes hybrids by default).
    t = lt.create_torrent(fs, piece, flags=lt.create_torrent.v1_only)
    t.set_creator("actorrent seed benchmark")
    lt.set_piece_hashes(t, data)
    torrent = os.path.join(workdir, "seedbench.torrent")
    with open(torrent, "wb") as f:
        f.write(lt.bencode(t.generate()))
    return data, torrent


class Seed:
    """A running seed process and the port it serves on."""

    def __init__(self, kind, argv, port_of):
        self.kind = kind
        self.metrics = None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if kind.startswith("actorrent") else None,
            text=True,
        )
        deadline = time.monotonic() + 300
        self.port = None
        while self.port is None:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"{kind} seed exited before reporting its port")
            self.port = port_of(line)
            self.first = line
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} seed did not start")
        self.pid = self.proc.pid

    def wait_ready(self):
        """actorrent reports its port before checking the data; wait for
        `seeding` so no trial measures the check."""
        if not self.kind.startswith("actorrent"):
            return
        line = self.first
        while json.loads(line).get("state") != "seeding":
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("actorrent seed exited while checking")
        # Keep draining stdout so a full pipe never blocks the seed.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        if self.proc.poll() is None:
            if self.kind.startswith("actorrent"):
                self.proc.send_signal(2)
            else:
                self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port():
    # Racy in principle (another process may take it before the seed binds),
    # harmless here: the seed fails to start and the run stops loudly.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TURNAROUND = "actorrent_serve_turnaround_seconds_bucket"


def turnaround_buckets(seed):
    """Cumulative buckets {upper bound s: count} of the seed's serve
    turnaround histogram, or None for a seed without --metrics."""
    if seed.metrics is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{seed.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(TURNAROUND + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = int(line.rsplit(" ", 1)[1])
    return out


def quantiles(before, after, qs=(0.5, 0.99)):
    """Quantiles (bucket upper bounds, seconds) of the requests recorded
    between two scrapes; None when there were none."""
    if before is None or after is None:
        return [None for _ in qs]
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0) for b in bounds]
    total = cum[-1] if cum else 0
    if total <= 0:
        return [None for _ in qs]
    return [next(b for b, c in zip(bounds, cum) if c >= q * total) for q in qs]


def start_actorrent(binary, torrent, data, kind="actorrent"):
    def port_of(line):
        return json.loads(line)["listen_port"] or None

    metrics = free_port()

    s = Seed(
        kind,
        [
            binary,
            "seed",
            torrent,
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            # A LAN seed serves everyone; with 4 leechers the default 4
            # slots would unchoke them all too, but not at once.
            "--unchoke-slots",
            "unlimited",
            "--stats-json",
            "-",
            "--metrics",
            f"127.0.0.1:{metrics}",
        ],
        port_of,
    )
    s.metrics = metrics
    s.wait_ready()
    return s


def start_libtorrent(torrent, data, profile):
    def port_of(line):
        return int(line.split()[1]) if line.startswith("PORT ") else None

    return Seed(
        "libtorrent",
        [
            "/usr/bin/python3",
            LT_PEER,
            "seed",
            "--torrent",
            torrent,
            "--save-path",
            data,
            "--profile",
            profile,
            "--timeout",
            "86400",
        ],
        port_of,
    )


def actorrent_leechers(binary, seed, torrent, size, outs, timeout, encryption):
    """actorrent downloads into each of `outs` at once; returns each one's
    (start, end) wall-clock span, from spawn to exit (it exits once the
    data is verified and synced)."""
    procs = []
    for o in outs:
        start = time.time()
        p = subprocess.Popen(
            [binary, "download", torrent, "--output", o, "--peer", f"127.0.0.1:{seed.port}", "--stats-json", "-"]
            + (["--encryption", encryption] if encryption else []),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append((p, start))
    spans, failed = [], []
    deadline = time.monotonic() + timeout
    ends = {}
    while len(ends) < len(procs) and time.monotonic() < deadline:
        for i, (p, _) in enumerate(procs):
            if i not in ends and p.poll() is not None:
                ends[i] = time.time()
        time.sleep(0.01)
    for i, (p, start) in enumerate(procs):
        if i not in ends:
            p.kill()
        out, _ = p.communicate()
        lines = out.strip().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        if p.returncode != 0 or last.get("state") != "complete":
            failed.append(p.returncode)
            continue
        spans.append((start, ends[i]))
    return spans, failed


def lt_leechers(seed, torrent, size, outs, profile, timeout, plaintext):
    """libtorrent downloads into each of `outs` at once; returns each one's
    (start, end) span as the leecher measured it (torrent added to last
    piece verified)."""
    procs = [
        subprocess.Popen(
            [
                "/usr/bin/python3",
                LT_PEER,
                "leech",
                "--torrent",
                torrent,
                "--save-path",
                o,
                "--peer",
                f"127.0.0.1:{seed.port}",
                "--no-pex",
                "--profile",
                profile,
                "--timeout",
                str(timeout),
            ]
            + (["--encryption", "disabled"] if plaintext else []),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        for o in outs
    ]
    spans = []
    failed = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout + 60)
        done = [l for l in out.splitlines() if l.startswith("DONE ")]
        if p.returncode != 0 or not done:
            failed.append(p.returncode)
            continue
        _, nbytes, _, start, end = done[0].split()
        assert int(nbytes) == size
        spans.append((float(start), float(end)))
    return spans, failed


def drop_caches():
    """Writes back and drops the page cache, so the seed reads the payload
    from the disk (root only; it affects the whole machine)."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fs_type(path):
    """The type of the filesystem holding `path` (ext4, tmpfs...)."""
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
    return (out.stdout.split() or ["unknown"])[0]


def trial(seed, torrent, size, n, workdir, a, kind):
    """n leechers of `kind` from `seed` at once; returns (MB/s, seed CPU
    s/GiB, span s, leechers' CPU s/GiB, share of the machine's CPUs the
    seed and leechers used over the span, serve turnaround median and p99
    in seconds or None) or raises."""
    outs = [os.path.join(workdir, f"leech-{seed.kind}-{n}-{i}") for i in range(n)]
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
        os.makedirs(o)
    if a.cold:
        drop_caches()
    cpu0 = cpu_seconds(seed.pid)
    hist0 = turnaround_buckets(seed)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if kind == "actorrent":
        spans, failed = actorrent_leechers(a.actorrent, seed, torrent, size, outs, a.timeout, a.actorrent_encryption)
    else:
        spans, failed = lt_leechers(seed, torrent, size, outs, a.lt_profile, a.timeout, a.lt_plaintext)
    cpu = cpu_seconds(seed.pid) - cpu0
    turn = quantiles(hist0, turnaround_buckets(seed))
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The leechers are the only children reaped during the trial (with
    # --cold, also one `sync`, which costs nothing to speak of).
    leech_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} leechers failed ({failed})")
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    served = n * size
    busy = (cpu + leech_cpu) / (span * os.cpu_count())
    return served / span / 1e6, cpu / (served / GIB), span, leech_cpu / (served / GIB), busy, turn


def ms(v):
    return "-" if v is None else ("inf" if v == float("inf") else f"{1000 * v:.2f}")


def median_or_none(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--leechers", default="1,2,4,8", help="comma-separated counts")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seeds", default="actorrent,libtorrent")
    ap.add_argument(
        "--leecher-kinds",
        default="libtorrent",
        help="comma-separated: libtorrent, actorrent (each kind is a separate set of trials)",
    )
    ap.add_argument("--actorrent", default=os.path.join(ROOT, "target", "release", "actorrent"))
    ap.add_argument("--baseline", default=None,
                    help="another actorrent binary (e.g. main's build), served as seed kind actorrent-base")
    ap.add_argument(
        "--lt-profile",
        choices=("tuned", "default", "default-tcp", "tuned-utp"),
        default="tuned",
        help="libtorrent settings for the libtorrent seed and all leechers",
    )
    ap.add_argument("--workdir", default=None,
                    help="parent of the scratch directory (payload and leechers' downloads)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each trial (root only), so seeds read from disk")
    ap.add_argument(
        "--lt-plaintext",
        action="store_true",
        help="libtorrent leechers handshake in plaintext; by default they try MSE first, "
        "and each seed settles the encryption by its own settings",
    )
    ap.add_argument(
        "--actorrent-encryption",
        choices=("prefer", "require", "disable"),
        default=None,
        help="--encryption for actorrent leechers (default: theirs, prefer, so an actorrent seed "
        "serves them RC4-encrypted; disable for plaintext)",
    )
    ap.add_argument("--timeout", type=float, default=600, help="per leecher, seconds")
    ap.add_argument("--json", default=None, help="also write every trial here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()

    kinds = a.seeds.split(",")
    if "actorrent" in kinds and not os.access(a.actorrent, os.X_OK):
        log(f"{a.actorrent} missing: measuring libtorrent only (cargo build --release)")
        kinds.remove("actorrent")
    if a.baseline and "actorrent-base" not in kinds:
        kinds.insert(1 if "actorrent" in kinds else 0, "actorrent-base")
    counts = [int(c) for c in a.leechers.split(",")]
    leecher_kinds = a.leecher_kinds.split(",")
    if "actorrent" in leecher_kinds and not os.access(a.actorrent, os.X_OK):
        raise SystemExit(f"{a.actorrent} missing: cannot run actorrent leechers")
    if a.cold and not (os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)):
        raise SystemExit("--cold needs root to write /proc/sys/vm/drop_caches")
    size = a.size_mib << 20
    workdir = tempfile.mkdtemp(prefix="seedbench-", dir=a.workdir)
    fstype = fs_type(workdir)
    if a.cold and fstype == "tmpfs":
        raise SystemExit(f"--cold on tmpfs ({workdir}) measures nothing: its pages cannot be dropped")
    loads = []
    seeds = []
    results = []
    try:
        log(f"making a {a.size_mib} MiB payload in {workdir}")
        data, torrent = make_payload(workdir, size, a.piece_kib << 10)
        for kind in kinds:
            seeds.append(
                start_actorrent(a.actorrent, torrent, data)
                if kind == "actorrent"
                else start_actorrent(a.baseline, torrent, data, kind)
                if kind == "actorrent-base"
                else start_libtorrent(torrent, data, a.lt_profile)
            )
            log(f"{kind} seed on port {seeds[-1].port}, pid {seeds[-1].pid}")
        for r in range(a.runs):
            for lk in leecher_kinds:
                for n in counts:
                    for seed in seeds:
                        loads.append(os.getloadavg()[0])
                        mbs, cpu, span, lcpu, busy, turn = trial(seed, torrent, size, n, workdir, a, lk)
                        log(
                            f"run {r + 1}: {seed.kind} -> {n} {lk} leechers: "
                            f"{mbs:.0f} MB/s, {cpu:.2f} CPU s/GiB ({span:.1f} s), "
                            f"leechers {lcpu:.2f} CPU s/GiB, CPUs {100 * busy:.0f} % busy, "
                            f"turnaround p50/p99 {ms(turn[0])}/{ms(turn[1])} ms"
                        )
                        results.append(
                            {
                                "run": r,
                                "seed": seed.kind,
                                "leecher": lk,
                                "leechers": n,
                                "mb_s": mbs,
                                "cpu_s_per_gib": cpu,
                                "span_s": span,
                                "leechers_cpu_s_per_gib": lcpu,
                                "cpu_busy": busy,
                                "turnaround_p50_s": turn[0],
                                "turnaround_p99_s": turn[1],
                                "load": loads[-1],
                            }
                        )
    finally:
        for s in seeds:
            s.stop()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    if a.json:
        with open(a.json, "w") as f:
            meta = {"size_mib": a.size_mib, "piece_kib": a.piece_kib, "lt_profile": a.lt_profile,
                    "lt_plaintext": a.lt_plaintext, "cold": a.cold, "fs": fstype, "loads": loads}
            json.dump({**meta, "trials": results}, f, indent=1)
    print(
        f"\nSeed egress, {a.size_mib} MiB payload, {a.piece_kib} KiB pieces, "
        f"libtorrent settings `{a.lt_profile}`"
        f"{', plaintext handshakes' if a.lt_plaintext else ', MSE first (libtorrent default)'}, "
        f"{fstype}, {'cold' if a.cold else 'warm'} page cache, median of {a.runs}; "
        f"load average {statistics.median(loads) if loads else 0:.1f} (median at trial starts)\n"
    )
    print(
        "| leechers | seed | total MB/s | seed CPU s/GiB served | leechers CPU s/GiB | CPUs busy "
        "| serve turnaround p50 / p99 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for lk in leecher_kinds:
        med = {}
        for n in counts:
            for kind in kinds:
                rows = [x for x in results if x["seed"] == kind and x["leechers"] == n and x["leecher"] == lk]
                m = (
                    statistics.median(x["mb_s"] for x in rows),
                    statistics.median(x["cpu_s_per_gib"] for x in rows),
                )
                med[(kind, n)] = m
                lc = statistics.median(x["leechers_cpu_s_per_gib"] for x in rows)
                busy = statistics.median(x["cpu_busy"] for x in rows)
                p50 = median_or_none(x["turnaround_p50_s"] for x in rows)
                p99 = median_or_none(x["turnaround_p99_s"] for x in rows)
                print(
                    f"| {n} {lk} | {kind} | {m[0]:.0f} | {m[1]:.2f} | {lc:.2f} | {100 * busy:.0f} % "
                    f"| {ms(p50)} / {ms(p99)} |"
                )
            for other in kinds[1:]:
                (a0, c0), (a1, c1) = med[(kinds[0], n)], med[(other, n)]
                print(f"| {n} {lk} | {kinds[0]} / {other} | {a0 / a1:.2f} | {c0 / c1:.2f} | | | |")


if __name__ == "__main__":
    main()
