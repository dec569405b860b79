#!/usr/bin/python3
"""Download benchmark: actorrent against libtorrent, from a libtorrent seed on
loopback.

A 1 GiB single-file torrent (256 KiB pieces) is seeded by libtorrent on
127.0.0.1. Each run downloads it once with a fresh libtorrent session (the
baseline, tests/support/libtorrent_seed.py `leech`, same settings as the
seed) and once with `actorrent download --peer` (the release binary), into
fresh directories on the same filesystem as the source. Both downloaders end
with the data fsynced, and each download is compared byte for byte with the
source before its numbers count.

Per downloader process, from os.wait4's rusage:
  wall s        spawn to exit
  CPU s/GiB     (user + sys) / payload GiB
  peak RSS      ru_maxrss (counts mapped file pages too)
  peak anon RSS RssAnon from /proc/<pid>/status, sampled every 50 ms

Write syscalls per MiB come from a separate pass under strace, so tracing
never distorts the timed runs. strace -y names the file behind every fd,
which splits the writes into disk writes (fd is a file of the download) and
everything else (socket sends, eventfd wake-ups, logs). /proc/<pid>/io syscw
was the other option; it lumps all of those together and must be read at the
instant before exit, so it cannot say how many writes reached the disk.

Run with /usr/bin/python3 (it imports nothing from libtorrent itself, but the
seed script it starts needs the distribution's interpreter). See README.md.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SEED = os.path.join(REPO, "tests", "support", "libtorrent_seed.py")
PYTHON = "/usr/bin/python3"
MIB = 1 << 20
GIB = 1 << 30
WRITE_SYSCALLS = "write,pwrite64,pwritev,pwritev2,writev"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def make_source(dir_, size, piece_size):
    """Random payload and its torrent; returns (data path, torrent path)."""
    os.makedirs(dir_, exist_ok=True)
    data = os.path.join(dir_, "bench.img")
    with open(data, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    torrent = os.path.join(dir_, "bench.torrent")
    subprocess.run(
        [PYTHON, SEED, "make", "--data", data, "--piece-size", str(piece_size), "--out", torrent],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return data, torrent


class Seeder:
    """A fresh libtorrent seed per measured download, so no run inherits
    another's connection state. It rechecks the payload before it reports
    its port, so it hashes nothing while a download is being measured."""

    def __init__(self, torrent, save_path, log_path):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, SEED, "seed", "--torrent", torrent, "--save-path", save_path, "--timeout", "3600"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"seeder failed to start: {line!r}; see {log_path}")
        self.port = int(line.split()[1])

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def can_drop_caches():
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def downloader_cmd(client, args, torrent, out_dir, port):
    peer = f"127.0.0.1:{port}"
    if client == "libtorrent":
        return [PYTHON, SEED, "leech", "--torrent", torrent, "--save-path", out_dir,
                "--peer", peer, "--timeout", str(args.timeout)]
    return [args.actorrent, "download", torrent, "--output", out_dir, "--peer", peer,
            "--stats-json", "-"]


class AnonSampler(threading.Thread):
    """Polls RssAnon in /proc/<pid>/status every 50 ms. ru_maxrss also
    counts file pages a process has mapped, and libtorrent 2.x maps the
    files it downloads, so its ru_maxrss approaches the payload size; the
    anonymous part is the memory the client itself holds. A sample can miss
    a short peak, so this is a lower bound."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            try:
                with open(self.path) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass  # exited (or a zombie) between polls


def run_timed(cmd, stdout_path, stderr_path, timeout):
    """Spawns cmd and reaps it with wait4; returns (status, wall, rusage,
    peak anonymous RSS in KiB). A run past `timeout` is killed and reported
    as failed."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        timer.start()
        sampler = AnonSampler(proc.pid)
        sampler.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.done.set()
        wall = time.monotonic() - t0
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, ru, sampler.peak_kib


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MIB), fb.read(8 * MIB)
            if x != y:
                return False
            if not x:
                return True


def check_result(client, code, stdout_path, stderr_path, got, want, size):
    """Raises unless the download finished, said so, and is byte-identical."""
    def fail(why):
        tail = open(stderr_path, "rb").read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{client}: {why}\n--- stderr tail ---\n{tail}")

    if code != 0:
        fail(f"exit status {code}")
    lines = [l for l in open(stdout_path, encoding="utf-8", errors="replace").read().splitlines() if l.strip()]
    if client == "libtorrent":
        if lines != [f"DONE {size}"]:
            fail(f"unexpected output {lines[-3:]}")
    else:
        try:
            last = json.loads(lines[-1])
        except (IndexError, ValueError) as e:
            fail(f"no final stats JSON line ({e})")
        if last.get("event") != "complete":
            fail(f"final stats line is not complete: {last}")
    if not os.path.exists(got) or not same_file(got, want):
        fail(f"{got} differs from the source")


def measure(client, args, torrent, data, size, work, run):
    seeder = Seeder(torrent, os.path.dirname(data), os.path.join(work, f"seed-{client}-{run}.log"))
    out_dir = os.path.join(work, f"out-{client}-{run}")
    os.makedirs(out_dir)
    try:
        if args.cold:
            drop_caches()
        stdout_path = os.path.join(work, f"{client}-{run}.stdout")
        stderr_path = os.path.join(work, f"{client}-{run}.stderr")
        cmd = downloader_cmd(client, args, torrent, out_dir, seeder.port)
        code, wall, ru, anon_kib = run_timed(cmd, stdout_path, stderr_path, args.timeout)
    finally:
        seeder.stop()
    check_result(client, code, stdout_path, stderr_path,
                 os.path.join(out_dir, os.path.basename(data)), data, size)
    shutil.rmtree(out_dir)
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall_s": wall,
        "cpu_s_per_gib": cpu / (size / GIB),
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "max_rss_mib": ru.ru_maxrss / 1024,  # Linux reports KiB
        "anon_rss_mib": anon_kib / 1024,
        "mib_per_s": size / MIB / wall,
    }


def classify(target, out_dir, payload):
    """What a write went to, from strace -y's name for its fd."""
    if target == payload or target.startswith(payload + "/"):
        return "download file"
    if target.startswith(out_dir + "/"):
        return "other file in the output dir"  # e.g. resume data
    if target.startswith("/"):
        return "other file"
    for prefix, kind in (("socket:", "socket"), ("pipe:", "pipe"), ("anon_inode:[eventfd]", "eventfd")):
        if target.startswith(prefix):
            return kind
    return target or "unknown fd"


def count_writes(client, args, torrent, data, size, work):
    """One untimed download under strace; write-family syscalls split by
    what the fd names: a file of the download, or anything else."""
    seeder = Seeder(torrent, os.path.dirname(data), os.path.join(work, f"seed-{client}-strace.log"))
    out_dir = os.path.join(work, f"out-{client}-strace")
    os.makedirs(out_dir)
    trace = os.path.join(work, f"{client}.strace")
    stdout_path = os.path.join(work, f"{client}-strace.stdout")
    stderr_path = os.path.join(work, f"{client}-strace.stderr")
    try:
        cmd = ["strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={WRITE_SYSCALLS}",
               "-e", "verbose=none", "-s", "0", "-o", trace]
        cmd += downloader_cmd(client, args, torrent, out_dir, seeder.port)
        code, _, _, _ = run_timed(cmd, stdout_path, stderr_path, args.timeout * 4)
    finally:
        seeder.stop()
    check_result(client, code, stdout_path, stderr_path,
                 os.path.join(out_dir, os.path.basename(data)), data, size)
    out_real = os.path.realpath(out_dir)
    disk = other = 0
    by_kind = {}
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            # "<pid> name(fd<target>, ..." ; a "<... name resumed>" line
            # continues a call already counted at its "<unfinished ...>".
            if "resumed>" in line:
                continue
            head = line.split(None, 1)[-1]
            name, sep, rest = head.partition("(")
            if not sep or name not in WRITE_SYSCALLS.split(","):
                continue
            target = rest[rest.find("<") + 1 : rest.find(">")] if "<" in rest else ""
            kind = classify(target, out_real, os.path.join(out_real, os.path.basename(data)))
            if kind == "download file":
                disk += 1
            else:
                other += 1
            key = f"{name} to {kind}"
            by_kind[key] = by_kind.get(key, 0) + 1
    shutil.rmtree(out_dir)
    os.remove(trace)
    mib = size / MIB
    return {
        "disk_writes_per_mib": disk / mib,
        "all_writes_per_mib": (disk + other) / mib,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
    }


def fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def table(results, clients):
    cols = [
        ("wall s", "wall_s", 2),
        ("MiB/s", "mib_per_s", 0),
        ("CPU s/GiB", "cpu_s_per_gib", 2),
        ("peak RSS MiB", "max_rss_mib", 0),
        ("peak anon RSS MiB", "anon_rss_mib", 0),
        ("disk write syscalls/MiB", "disk_writes_per_mib", 2),
        ("all write syscalls/MiB", "all_writes_per_mib", 2),
    ]
    med = {}
    for c in clients:
        runs = results[c]["runs"]
        med[c] = {k: statistics.median(r[k] for r in runs) for _, k, _ in cols[:5]}
        w = results[c].get("writes") or {}
        for _, k, _ in cols[5:]:
            med[c][k] = w.get(k)
    lines = [
        "| downloader | " + " | ".join(h for h, _, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for c in clients:
        lines.append(f"| {c} | " + " | ".join(fmt(med[c][k], d) for _, k, d in cols) + " |")
    if "libtorrent" in med and "actorrent" in med:
        def ratio(k):
            a, b = med["actorrent"][k], med["libtorrent"][k]
            return None if a is None or b is None or b == 0 else a / b
        lines.append("| actorrent / libtorrent | " + " | ".join(fmt(ratio(k)) for _, k, _ in cols) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description="actorrent vs libtorrent download benchmark")
    p.add_argument("--runs", type=int, default=3, help="timed downloads per client (median reported)")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--piece-kib", type=int, default=256)
    p.add_argument("--actorrent", default=os.path.join(REPO, "target", "release", "actorrent"),
                   help="the binary to measure (build with cargo build --release)")
    p.add_argument("--clients", default="libtorrent,actorrent",
                   help="comma-separated subset of libtorrent,actorrent")
    p.add_argument("--workdir", default=None,
                   help="parent of the scratch directory (default: the system temp dir); "
                        "source and downloads share its filesystem")
    p.add_argument("--cold", action="store_true",
                   help="drop the page cache before each timed download (root only)")
    p.add_argument("--no-strace", action="store_true", help="skip the write-syscall pass")
    p.add_argument("--timeout", type=int, default=900, help="seconds per download before it is killed")
    p.add_argument("--json", help="also write every number to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args()

    clients = [c for c in args.clients.split(",") if c]
    for c in clients:
        if c not in ("libtorrent", "actorrent"):
            p.error(f"unknown client {c}")
    if "actorrent" in clients and not os.access(args.actorrent, os.X_OK):
        log(f"no actorrent binary at {args.actorrent} (cargo build --release); measuring libtorrent only")
        clients.remove("actorrent")
    if args.cold and not can_drop_caches():
        p.error("--cold needs root to write /proc/sys/vm/drop_caches")
    if not args.no_strace and shutil.which("strace") is None:
        p.error("strace is not installed (or pass --no-strace)")

    size = args.size_mib * MIB
    work = tempfile.mkdtemp(prefix="actorrent-bench-", dir=args.workdir)
    results = {c: {"runs": []} for c in clients}
    try:
        log(f"scratch {work}; making {args.size_mib} MiB source, {args.piece_kib} KiB pieces")
        data, torrent = make_source(os.path.join(work, "src"), size, args.piece_kib * 1024)
        for run in range(args.runs):
            # Alternate who goes first so drift in machine load spreads evenly.
            order = clients if run % 2 == 0 else clients[::-1]
            for c in order:
                r = measure(c, args, torrent, data, size, work, run)
                results[c]["runs"].append(r)
                log(f"run {run + 1}/{args.runs} {c}: {r['wall_s']:.2f} s, "
                    f"{r['cpu_s_per_gib']:.2f} CPU s/GiB, {r['max_rss_mib']:.0f} MiB RSS, "
                    f"{r['anon_rss_mib']:.0f} MiB anon")
        if not args.no_strace:
            for c in clients:
                results[c]["writes"] = count_writes(c, args, torrent, data, size, work)
                log(f"{c} writes: {results[c]['writes']}")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    lt_version = subprocess.run([PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"],
                                capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    print(f"{args.size_mib} MiB single file, {args.piece_kib} KiB pieces, libtorrent {lt_version} seed on "
          f"127.0.0.1, {'cold' if args.cold else 'warm'} page cache, median of {args.runs} "
          f"(actorrent {rev}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end)\n")
    print(table(results, clients))
    for c in clients:
        w = results[c].get("writes")
        if w:
            print(f"\n{c} write-family syscalls by target: " +
                  ", ".join(f"{k} {v}" for k, v in w["by_kind"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "piece_size": args.piece_kib * 1024, "cold": args.cold,
                       "libtorrent": lt_version, "actorrent_rev": rev, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
