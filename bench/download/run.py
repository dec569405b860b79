#!/usr/bin/python3
"""Download benchmark: actorrent beside libtorrent, rqbit and aria2, all
leeching from the same libtorrent seed on loopback.

A 1 GiB single-file torrent (256 KiB pieces) is seeded by libtorrent on
127.0.0.1. Each run downloads it once with every client present, in
alternating order, each from a fresh seed process into a fresh directory on
the same filesystem as the source:

  libtorrent  tests/support/lt_peer.py `leech --fsync` (the seed's settings),
              told the seed's address
  actorrent   `actorrent download --peer` (the release binary)
  rqbit       `rqbit download --initial-peers` (cargo install rqbit), with
              DHT, LSD, UPnP, trackers, persistence and its HTTP API off
  aria2       `aria2c` (Debian aria2). It has no option that names a peer, so
              it gets a tracker: a fixed-answer HTTP tracker in this process
              whose only peer is the seed. DHT, LPD and PEX off.

libtorrent and actorrent fsync what they downloaded before they exit; rqbit
and aria2 do not, so the driver fsyncs their file after they exit and counts
that time in their wall clock. Every download is compared byte for byte with
the source before its numbers count.

Per downloader process, from os.wait4's rusage:
  wall s        spawn to exit (+ the fsync above)
  CPU s/GiB     (user + sys) / payload GiB
  peak RSS      GNU time's %M, the client's own maxrss (counts mapped file
                pages too; not wait4's, which would include this driver's RSS)
  peak anon RSS RssAnon from /proc/<pid>/status, sampled every 50 ms

Syscalls per MiB come from a separate, untimed pass of each client under
`strace -f -y`, so tracing never distorts the timed runs. -y names the file
behind every fd, which splits writes into disk writes (the downloaded file)
and the rest, and reads into socket, eventfd and file reads.

Run with /usr/bin/python3 (it imports nothing from libtorrent itself, but the
seed script it starts needs the distribution's interpreter). See README.md.
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SEED = os.path.join(REPO, "tests", "support", "lt_peer.py")
PYTHON = "/usr/bin/python3"
MIB = 1 << 20
GIB = 1 << 30
CLIENTS = ("libtorrent", "actorrent", "rqbit", "aria2")
# `--baseline PATH` adds this client: another actorrent binary (e.g. main's
# release build) measured in the same run, for before/after ratios.
BASELINE = "actorrent-base"
# `--encryption`: the seed's (and the libtorrent leecher's) lt_peer.py
# arguments, and each other client's flags, per mode. `forced` is MSE with
# RC4 only both ways (libtorrent's out_enc_policy and in_enc_policy forced,
# allowed_enc_level rc4; actorrent `--encryption require`; aria2
# --bt-require-crypto with arc4); rqbit has no MSE and is left out.
ENC_LT = {
    "default": [],
    "forced": ["--encryption", "forced", "--enc-level", "rc4"],
    "disabled": ["--encryption", "disabled"],
}
ENC_ACTORRENT = {"default": [], "forced": ["--encryption", "require"], "disabled": ["--encryption", "disable"]}
ENC_ARIA2 = {
    "default": [],
    "forced": ["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"],
    "disabled": [],
}
ENCRYPTION = "default"
# These fsync the download themselves before they exit; the driver syncs the
# others' file and counts the time in their wall clock.
SELF_SYNCING = ("libtorrent", "actorrent", BASELINE)
WRITES = ("write", "pwrite64", "pwritev", "pwritev2", "writev", "sendto", "sendmsg", "sendmmsg")
READS = ("read", "pread64", "preadv", "preadv2", "readv", "recvfrom", "recvmsg", "recvmmsg")
# The syscall columns of the table: (header, key); the keys are counted by
# `count_syscalls`.
SYSCALL_COLS = [
    ("disk writes", "disk_write"),
    ("socket reads", "socket_read"),
    ("socket writes", "socket_write"),
    ("eventfd r+w", "eventfd"),
    ("futex", "futex"),
    ("epoll_wait", "epoll_wait"),
    ("all", "all"),
]


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
            [PYTHON, SEED, "seed", "--torrent", torrent, "--save-path", save_path, "--timeout", "3600"]
            + ENC_LT[ENCRYPTION],
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


class FixedTracker:
    """An HTTP tracker that answers every announce with one peer, the
    current seed (`seed_port` on 127.0.0.1): what `--peer` is for the
    clients that have such an option. aria2 has none."""

    def __init__(self):
        tracker = self
        self.seed_port = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                peer = socket.inet_aton("127.0.0.1") + tracker.seed_port.to_bytes(2, "big")
                body = b"d8:completei1e10:incompletei0e8:intervali1800e5:peers6:" + peer + b"e"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/announce"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def can_drop_caches():
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def fs_type(path):
    """The type of the filesystem holding `path` (ext4, tmpfs...)."""
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
    return (out.stdout.split() or ["unknown"])[0]


def downloader_cmd(client, args, torrent, out_dir, port, tracker):
    peer = f"127.0.0.1:{port}"
    if client == "libtorrent":
        return [PYTHON, SEED, "leech", "--torrent", torrent, "--save-path", out_dir,
                "--peer", peer, "--fsync", "--timeout", str(args.timeout)] + ENC_LT[ENCRYPTION]
    if client in ("actorrent", BASELINE):
        binary = args.actorrent if client == "actorrent" else args.baseline
        return [binary, "download", torrent, "--output", out_dir, "--peer", peer,
                "--stats-json", "-"] + ENC_ACTORRENT[ENCRYPTION]
    if client == "rqbit":
        # Global options first, then the subcommand's. No listening socket,
        # no discovery, no session state: one peer, like the others.
        return [args.rqbit, "--disable-dht", "--disable-dht-persistence", "--disable-lsd",
                "--disable-trackers", "--disable-upnp-port-forward", "--disable-tcp-listen",
                "download", "--output-folder", out_dir, "--exit-on-finish", "--disable-http-api",
                "--initial-peers", peer, torrent]
    tracker.seed_port = port
    return [args.aria2c, "--no-conf=true", "--dir", out_dir, "--bt-tracker", tracker.url] + ENC_ARIA2[ENCRYPTION] + [
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", "--seed-time=0", "--disable-ipv6=true",
            # falloc: fallocate(2) instead of writing zeros first (the default
            # `prealloc` may), as the others allocate.
            "--file-allocation=falloc", "--summary-interval=0", "--console-log-level=warn",
            "--download-result=hide", "--auto-save-interval=0", "--bt-save-metadata=false",
            "--allow-overwrite=true", torrent]


class AnonSampler(threading.Thread):
    """Polls RssAnon in /proc/<pid>/status every 50 ms. Peak RSS also
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


def child_pid(pid, timeout=5.0):
    """The first child of `pid` (the client under /usr/bin/time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            return None
        if kids:
            return int(kids[0])
        time.sleep(0.005)
    return None


def run_timed(cmd, stdout_path, stderr_path, timeout, sync_after=None):
    """Spawns cmd under /usr/bin/time and reaps it with wait4; returns
    (status, wall, rusage, peak RSS in KiB, peak anonymous RSS in KiB).

    Peak RSS is GNU time's %M, not this process's ru_maxrss: Linux carries
    the RSS of the process that forks and execs into the child's maxrss,
    so a client started straight from this Python process would report at
    least the driver's own RSS (tens of MiB). time is small. CPU comes from
    wait4 (time's own CPU is negligible). `sync_after`, if given, is a file
    fsynced once the process has exited, inside the wall time. A run past
    `timeout` is killed and reported as failed."""
    rss_path = stdout_path + ".rss"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_path] + cmd,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        timer.start()
        sampler = AnonSampler(child_pid(proc.pid) or proc.pid)
        sampler.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.done.set()
        if sync_after and os.path.exists(sync_after):
            fd = os.open(sync_after, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        wall = time.monotonic() - t0
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        # The last line: time writes "Command exited with non-zero status"
        # before it on failure.
        rss_kib = int(open(rss_path).read().split()[-1])
    except (OSError, ValueError, IndexError):
        rss_kib = 0
    return proc.returncode, wall, ru, rss_kib, sampler.peak_kib


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
    """Raises unless the download finished, said so where the client can,
    and is byte-identical. Returns actorrent's last stats line (else {})."""
    def fail(why):
        tail = open(stderr_path, "rb").read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{client}: {why}\n--- stderr tail ---\n{tail}")

    if code != 0:
        fail(f"exit status {code}")
    lines = [l for l in open(stdout_path, encoding="utf-8", errors="replace").read().splitlines() if l.strip()]
    last = {}
    if client == "libtorrent":
        done = [l.split() for l in lines if l.startswith("DONE ")]
        if len(done) != 1 or done[0][1] != str(size):
            fail(f"unexpected output {lines[-3:]}")
    elif client in ("actorrent", BASELINE):
        try:
            last = json.loads(lines[-1])
        except (IndexError, ValueError) as e:
            fail(f"no final stats JSON line ({e})")
        if last.get("event") != "complete":
            fail(f"final stats line is not complete: {last}")
    # rqbit and aria2 say it with their exit status (checked above).
    if not os.path.exists(got) or not same_file(got, want):
        fail(f"{got} differs from the source")
    return last


def measure(client, args, torrent, data, size, work, run, tracker):
    seeder = Seeder(torrent, os.path.dirname(data), os.path.join(work, f"seed-{client}-{run}.log"))
    out_dir = os.path.join(work, f"out-{client}-{run}")
    os.makedirs(out_dir)
    got = os.path.join(out_dir, os.path.basename(data))
    try:
        if args.cold:
            drop_caches()
        stdout_path = os.path.join(work, f"{client}-{run}.stdout")
        stderr_path = os.path.join(work, f"{client}-{run}.stderr")
        cmd = downloader_cmd(client, args, torrent, out_dir, seeder.port, tracker)
        sync = None if client in SELF_SYNCING else got
        code, wall, ru, rss_kib, anon_kib = run_timed(cmd, stdout_path, stderr_path, args.timeout, sync)
    finally:
        seeder.stop()
    last = check_result(client, code, stdout_path, stderr_path, got, data, size)
    shutil.rmtree(out_dir)
    cpu = ru.ru_utime + ru.ru_stime
    r = {
        "wall_s": wall,
        "cpu_s_per_gib": cpu / (size / GIB),
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "max_rss_mib": rss_kib / 1024,
        "anon_rss_mib": anon_kib / 1024,
        "mib_per_s": size / MIB / wall,
    }
    if "budget_peak" in last:
        r["budget_peak_mib"] = last["budget_peak"] / MIB
    if "budget_limit_peak" in last:
        r["budget_limit_peak_mib"] = last["budget_limit_peak"] / MIB
    return r


def classify(target, out_dir, payload):
    """What an fd is, from strace -y's name for it."""
    if target == payload or target.startswith(payload + "/"):
        return "download file"
    if target.startswith(out_dir + "/"):
        return "other file in the output dir"  # e.g. resume data
    if target.startswith("/"):
        return "other file"
    for prefix, kind in (("socket:", "socket"), ("TCP:", "socket"), ("UDP:", "socket"),
                         ("UNIX", "socket"), ("pipe:", "pipe"), ("anon_inode:[eventfd]", "eventfd")):
        if target.startswith(prefix):
            return kind
    return target or "unknown fd"


def parse_trace(trace, out_real, payload):
    """Counts every syscall in an `strace -f -y` log by name, and the read
    and write families also by what their fd is."""
    names, by_kind = {}, {}
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            # "<pid> name(fd<target>, ..." ; a "<... name resumed>" line
            # continues a call already counted at its "<unfinished ...>".
            if "resumed>" in line or line.startswith("+++") or "--- SIG" in line:
                continue
            head = line.split(None, 1)[-1]
            name, sep, rest = head.partition("(")
            if not sep or not name.replace("_", "").isalnum():
                continue
            names[name] = names.get(name, 0) + 1
            if name in WRITES or name in READS:
                target = rest[rest.find("<") + 1 : rest.find(">")] if rest[:1].isdigit() and "<" in rest else ""
                kind = classify(target, out_real, payload)
                key = f"{name} {kind}"
                by_kind[key] = by_kind.get(key, 0) + 1
    return names, by_kind


def count_syscalls(client, args, torrent, data, size, work, tracker):
    """One untimed download under strace -f -y, every syscall logged;
    returns counts per MiB: by name, by (name, fd kind), and the table's
    columns."""
    seeder = Seeder(torrent, os.path.dirname(data), os.path.join(work, f"seed-{client}-strace.log"))
    out_dir = os.path.join(work, f"out-{client}-strace")
    os.makedirs(out_dir)
    got = os.path.join(out_dir, os.path.basename(data))
    trace = os.path.join(work, f"{client}.strace")
    stdout_path = os.path.join(work, f"{client}-strace.stdout")
    stderr_path = os.path.join(work, f"{client}-strace.stderr")
    try:
        cmd = ["strace", "-f", "-qq", "-y", "-e", "verbose=none", "-s", "0", "-o", trace]
        cmd += downloader_cmd(client, args, torrent, out_dir, seeder.port, tracker)
        code, _, _, _, _ = run_timed(cmd, stdout_path, stderr_path, args.timeout * 4)
    finally:
        seeder.stop()
    check_result(client, code, stdout_path, stderr_path, got, data, size)
    names, by_kind = parse_trace(trace, os.path.realpath(out_dir), os.path.realpath(got))
    shutil.rmtree(out_dir)
    if not args.keep:
        os.remove(trace)
    mib = size / MIB

    def kinds(family, kind):
        return sum(v for k, v in by_kind.items() if k.split(" ", 1)[0] in family and k.split(" ", 1)[1] == kind)

    cols = {
        "disk_write": kinds(WRITES, "download file"),
        "socket_read": kinds(READS, "socket"),
        "socket_write": kinds(WRITES, "socket"),
        "eventfd": kinds(READS, "eventfd") + kinds(WRITES, "eventfd"),
        "futex": names.get("futex", 0),
        "epoll_wait": sum(names.get(n, 0) for n in ("epoll_wait", "epoll_pwait", "epoll_pwait2")),
        "all": sum(names.values()),
    }
    return {
        "per_mib": {k: v / mib for k, v in cols.items()},
        "by_name": dict(sorted(names.items(), key=lambda kv: -kv[1])),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
    }


def fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


MAIN_COLS = [
    ("wall s", "wall_s", 2),
    ("MiB/s", "mib_per_s", 0),
    ("CPU s/GiB", "cpu_s_per_gib", 2),
    ("peak RSS MiB", "max_rss_mib", 0),
    ("peak anon RSS MiB", "anon_rss_mib", 0),
]


def medians(results, clients):
    med = {}
    for c in clients:
        runs = results[c]["runs"]
        med[c] = {k: statistics.median(r[k] for r in runs) for _, k, _ in MAIN_COLS}
    return med


def table(results, clients):
    """Medians per client, then actorrent / each other client."""
    med = medians(results, clients)
    lines = [
        "| downloader | " + " | ".join(h for h, _, _ in MAIN_COLS) + " |",
        "|---|" + "---:|" * len(MAIN_COLS),
    ]
    for c in clients:
        lines.append(f"| {c} | " + " | ".join(fmt(med[c][k], d) for _, k, d in MAIN_COLS) + " |")
    if "actorrent" in med:
        for other in clients:
            if other == "actorrent":
                continue

            def ratio(k):
                a, b = med["actorrent"][k], med[other][k]
                return None if b == 0 else a / b

            lines.append(f"| actorrent / {other} | " + " | ".join(fmt(ratio(k)) for _, k, _ in MAIN_COLS) + " |")
    return "\n".join(lines)


def syscall_table(results, clients):
    rows = [c for c in clients if results[c].get("syscalls")]
    if not rows:
        return ""
    lines = [
        "| syscalls per MiB | " + " | ".join(h for h, _ in SYSCALL_COLS) + " |",
        "|---|" + "---:|" * len(SYSCALL_COLS),
    ]
    for c in rows:
        pm = results[c]["syscalls"]["per_mib"]
        lines.append(f"| {c} | " + " | ".join(fmt(pm[k]) for _, k in SYSCALL_COLS) + " |")
    return "\n".join(lines)


def default_tool(name, *extra):
    found = shutil.which(name)
    if found:
        return found
    for e in extra:
        if os.access(e, os.X_OK):
            return e
    return name


def main():
    p = argparse.ArgumentParser(description="actorrent vs libtorrent, rqbit and aria2: download benchmark")
    p.add_argument("--runs", type=int, default=3, help="timed downloads per client (median reported)")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--piece-kib", type=int, default=256)
    p.add_argument("--actorrent", default=os.path.join(REPO, "target", "release", "actorrent"),
                   help="the binary to measure (build with cargo build --release)")
    p.add_argument("--baseline", default=None,
                   help="another actorrent binary measured beside --actorrent as client " + BASELINE)
    p.add_argument("--rqbit", default=default_tool("rqbit", os.path.expanduser("~/.cargo/bin/rqbit")),
                   help="rqbit binary (cargo install rqbit --locked)")
    p.add_argument("--aria2c", default=default_tool("aria2c"), help="aria2c binary (Debian aria2)")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help="comma-separated subset of " + ",".join(CLIENTS) +
                        "; those not installed are left out with a note")
    p.add_argument("--workdir", default=None,
                   help="parent of the scratch directory (default: the system temp dir); "
                        "source and downloads share its filesystem")
    p.add_argument("--cold", action="store_true",
                   help="drop the page cache before each timed download (root only)")
    p.add_argument("--no-strace", action="store_true", help="skip the syscall-count pass")
    p.add_argument("--timeout", type=int, default=900, help="seconds per download before it is killed")
    p.add_argument("--json", help="also write every number to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--encryption", choices=sorted(ENC_LT), default="default",
                   help="MSE/PE: forced (RC4 only, every client that has it), disabled, "
                        "or each client's default")
    args = p.parse_args()
    global ENCRYPTION
    ENCRYPTION = args.encryption

    clients = [c for c in args.clients.split(",") if c]
    for c in clients:
        if c not in CLIENTS:
            p.error(f"unknown client {c}")
    if ENCRYPTION == "forced" and "rqbit" in clients:
        log("rqbit: no MSE/PE; left out with --encryption forced")
        clients.remove("rqbit")
    if args.baseline:
        clients.insert(clients.index("actorrent") + 1 if "actorrent" in clients else 0, BASELINE)
    binaries = {"actorrent": args.actorrent, BASELINE: args.baseline, "rqbit": args.rqbit, "aria2": args.aria2c}
    for c in list(clients):
        b = binaries.get(c)
        if b is not None and not (os.access(b, os.X_OK) or shutil.which(b)):
            log(f"{c}: no binary at {b}; left out")
            clients.remove(c)
    if args.cold and not can_drop_caches():
        p.error("--cold needs root to write /proc/sys/vm/drop_caches")
    if not args.no_strace and shutil.which("strace") is None:
        p.error("strace is not installed (or pass --no-strace)")

    size = args.size_mib * MIB
    work = tempfile.mkdtemp(prefix="actorrent-bench-", dir=args.workdir)
    fstype = fs_type(work)
    if args.cold and fstype == "tmpfs":
        p.error(f"--cold on tmpfs ({work}) measures nothing: its pages cannot be dropped")
    results = {c: {"runs": []} for c in clients}
    tracker = FixedTracker()
    loads = []
    try:
        log(f"scratch {work} ({fstype}); making {args.size_mib} MiB source, {args.piece_kib} KiB pieces")
        data, torrent = make_source(os.path.join(work, "src"), size, args.piece_kib * 1024)
        for run in range(args.runs):
            # Rotate who goes first so drift in machine load spreads evenly.
            k = run % len(clients)
            order = clients[k:] + clients[:k]
            for c in order:
                loads.append(os.getloadavg()[0])
                r = measure(c, args, torrent, data, size, work, run, tracker)
                results[c]["runs"].append(r)
                log(f"run {run + 1}/{args.runs} {c}: {r['wall_s']:.2f} s, "
                    f"{r['cpu_s_per_gib']:.2f} CPU s/GiB, {r['max_rss_mib']:.0f} MiB RSS, "
                    f"{r['anon_rss_mib']:.0f} MiB anon (load {loads[-1]:.1f})")
        if not args.no_strace:
            for c in clients:
                results[c]["syscalls"] = count_syscalls(c, args, torrent, data, size, work, tracker)
                log(f"{c} syscalls per MiB: {results[c]['syscalls']['per_mib']}")
    finally:
        tracker.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return "?"
        return out.splitlines()[0] if out else "?"

    versions = {"libtorrent": version([PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"]),
                "actorrent": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()}
    if "rqbit" in clients:
        versions["rqbit"] = version([args.rqbit, "--version"])
    if "aria2" in clients:
        versions["aria2"] = version([args.aria2c, "--version"])
    print(f"{args.size_mib} MiB single file, {args.piece_kib} KiB pieces, libtorrent seed on 127.0.0.1, "
          f"{fstype} ({work}), {'cold' if args.cold else 'warm'} page cache, median of {args.runs}; "
          f"{os.cpu_count()} CPUs, load average {statistics.median(loads) if loads else 0:.1f} "
          f"(median at the start of each download); versions {versions}\n")
    print(table(results, clients))
    st = syscall_table(results, clients)
    if st:
        print("\n" + st)
        for c in clients:
            s = results[c].get("syscalls")
            if s:
                top = ", ".join(f"{k} {v / (size / MIB):.2f}" for k, v in list(s["by_kind"].items())[:8])
                print(f"\n{c} reads/writes per MiB by fd: {top}")
    for c in ("actorrent", BASELINE):
        if c not in clients:
            continue
        peaks = [r.get("budget_peak_mib") for r in results[c]["runs"] if "budget_peak_mib" in r]
        if peaks:
            print(f"\n{c} budget_peak (block bytes in flight) median {statistics.median(peaks):.0f} MiB")
        limits = [r["budget_limit_peak_mib"] for r in results[c]["runs"] if "budget_limit_peak_mib" in r]
        if limits:
            print(f"{c} budget effective limit peak median {statistics.median(limits):.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "piece_size": args.piece_kib * 1024, "cold": args.cold,
                       "fs": fstype, "versions": versions, "loads": loads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
