#!/usr/bin/python3
"""Profiling driver: one actorrent leecher or one actorrent seed on loopback,
with a profiler or tracer wrapped around it or attached to it.

    leech  a libtorrent seed serves the payload; `actorrent download` leeches
           it, run under --wrap (a command prefix: perf record, strace,
           taskset, heaptrack, valgrind...). Prints wall, CPU and peak RSS
           and the last --stats-json line.
    seed   `actorrent seed` (or, with --seed libtorrent, libtorrent's seed)
           serves N libtorrent leechers at once; --attach commands are
           started against the seed's pid once it is seeding and stopped
           (SIGINT) when the last leecher finishes; --ss samples
           `ss -tin` of the seed's connections every --ss-interval ms into
           a TSV (send queue, cwnd, unacked, bytes acked, rtt) and
           summarises how long each send queue sat empty.

In --wrap and --attach, {out} is the output directory, {pid} the seed's pid
and {port} its port (attach only), and {n} the number of leechers. The payload (random, one file,
`bench.img` + `bench.torrent`) is made once in --src and reused.

    /usr/bin/python3 bench/profile/run.py leech --src /dev/shm/prof --out /dev/shm/prof/l1 \\
        --wrap 'perf record -F 1999 --call-graph dwarf,16384 -o {out}/perf.data --'
    /usr/bin/python3 bench/profile/run.py seed --src /dev/shm/prof --out /dev/shm/prof/s1 \\
        --size-mib 512 --leechers 1 --ss \\
        --attach 'perf record -F 1999 --call-graph dwarf,16384 -p {pid} -o {out}/perf.data'

Use /usr/bin/python3 (it needs the distribution's python3-libtorrent).
bench/PROFILE.md has what was measured with it.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LT_SEED = os.path.join(REPO, "tests", "support", "lt_peer.py")
LT_PEER = os.path.join(REPO, "tests", "support", "lt_peer.py")
PYTHON = "/usr/bin/python3"
MIB = 1 << 20
GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[profile]", *a, file=sys.stderr, flush=True)


def make_source(src, size, piece):
    """Reuses src/bench.img and its torrent when the size matches."""
    os.makedirs(src, exist_ok=True)
    data = os.path.join(src, "bench.img")
    torrent = os.path.join(src, f"bench-{size // MIB}m-{piece // 1024}k.torrent")
    if not (os.path.exists(data) and os.path.getsize(data) == size):
        log(f"making {size // MIB} MiB of random payload in {data}")
        with open(data, "wb") as f:
            for _ in range(size // (4 * MIB)):
                f.write(os.urandom(4 * MIB))
            f.write(os.urandom(size % (4 * MIB)))
        if os.path.exists(torrent):
            os.remove(torrent)
    if not os.path.exists(torrent):
        subprocess.run([PYTHON, LT_SEED, "make", "--data", data, "--piece-size", str(piece),
                        "--out", torrent], check=True, stdout=subprocess.DEVNULL)
    return data, torrent


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def expand(cmd, **kw):
    return [part.format(**kw) for part in shlex.split(cmd)]


class Proc:
    """A child process we started, stopped by its pid only."""

    def __init__(self, argv, **kw):
        self.p = subprocess.Popen(argv, **kw)
        self.pid = self.p.pid

    def interrupt(self, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def lt_seed(torrent, save_path, out):
    """libtorrent seed (rechecks first); returns (Proc, port)."""
    p = Proc([PYTHON, LT_SEED, "seed", "--torrent", torrent, "--save-path", save_path,
              "--timeout", "3600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
             stderr=open(os.path.join(out, "lt-seed.log"), "wb"))
    line = p.p.stdout.readline().decode()
    if not line.startswith("PORT "):
        p.interrupt()
        raise SystemExit(f"libtorrent seed did not start: {line!r}")
    return p, int(line.split()[1])


def stop_lt_seed(p):
    p.p.stdin.close()
    try:
        p.p.wait(30)
    except subprocess.TimeoutExpired:
        p.p.kill()
        p.p.wait()


def cmd_leech(a):
    data, torrent = make_source(a.src, a.size_mib * MIB, a.piece_kib * 1024)
    rows = []
    for run in range(a.runs):
        out = os.path.join(a.out, f"run{run}") if a.runs > 1 else a.out
        os.makedirs(out, exist_ok=True)
        seed, port = lt_seed(torrent, os.path.dirname(data), out)
        dl = os.path.join(out, "download")
        shutil.rmtree(dl, ignore_errors=True)
        os.makedirs(dl)
        # GNU time reports the client's own peak RSS; this process's wait4
        # would carry the driver's RSS into it (Linux keeps the pre-exec
        # maxrss).
        argv = ["/usr/bin/time", "-f", "%M", "-o", os.path.join(out, "maxrss.txt")]
        argv += expand(a.wrap, out=out, n=1) if a.wrap else []
        argv += [a.actorrent, "download", torrent, "--output", dl, "--peer", f"127.0.0.1:{port}",
                 "--stats-json", "-"] + a.extra
        env = dict(os.environ)
        for kv in a.env:
            k, _, v = kv.partition("=")
            env[k] = v
        try:
            t0 = time.monotonic()
            with open(os.path.join(out, "stats.jsonl"), "wb") as so, \
                    open(os.path.join(out, "stderr.log"), "wb") as se:
                p = subprocess.Popen(argv, stdout=so, stderr=se, stdin=subprocess.DEVNULL, env=env)
                _, status, ru = os.wait4(p.pid, 0)
            wall = time.monotonic() - t0
        finally:
            stop_lt_seed(seed)
        lines = open(os.path.join(out, "stats.jsonl")).read().split("\n")
        lines = [l for l in lines if l.startswith("{")]
        last = json.loads(lines[-1]) if lines else {}
        ok = os.waitstatus_to_exitcode(status) == 0 and last.get("event") == "complete"
        if not a.keep_download:
            shutil.rmtree(dl, ignore_errors=True)
        cpu = ru.ru_utime + ru.ru_stime
        try:
            rss_kib = int(open(os.path.join(out, "maxrss.txt")).read().split()[-1])
        except (OSError, ValueError, IndexError):
            rss_kib = 0
        row = {"wall_s": wall, "cpu_s_per_gib": cpu / (a.size_mib / 1024), "user_s": ru.ru_utime,
               "sys_s": ru.ru_stime, "max_rss_mib": rss_kib / 1024,
               "budget_peak_mib": last.get("budget_peak", 0) / MIB, "ok": ok,
               "load": os.getloadavg()[0]}
        rows.append(row)
        # Under a wrapper rusage is the wrapper's children too; the numbers
        # then describe the wrapped run, not a clean one.
        log(f"leech run {run + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in row.items()))
        if not ok:
            raise SystemExit(f"download failed (status {status}); see {out}/stderr.log")
    if len(rows) > 1:
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "ok"}
        log("median: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    json.dump(rows, open(os.path.join(a.out, "leech.json"), "w"), indent=1)


class SsSampler(threading.Thread):
    """Samples `ss -tin` for the seed's port every `interval` seconds and
    appends one TSV row per connection: t, peer, Send-Q, cwnd, unacked,
    bytes_acked, rtt, notsent."""

    def __init__(self, port, interval, path):
        super().__init__(daemon=True)
        self.port, self.interval, self.path = port, interval, path
        self.done = threading.Event()
        self.rows = []

    def run(self):
        t0 = time.monotonic()
        while not self.done.is_set():
            t = time.monotonic() - t0
            out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{self.port} )"],
                                 capture_output=True, text=True).stdout.split("\n")
            i = 0
            while i < len(out) - 1:
                head, info = out[i].split(), out[i + 1]
                i += 2
                if len(head) < 4:
                    continue
                f = {}
                for tok in info.split():
                    k, _, v = tok.partition(":")
                    f[k] = v
                self.rows.append((t, head[3], int(head[1]), int(f.get("cwnd", 0) or 0),
                                  int(f.get("unacked", 0) or 0), int(f.get("bytes_acked", 0) or 0),
                                  f.get("rtt", "").split("/")[0], int(f.get("notsent", 0) or 0)))
            self.done.wait(self.interval)

    def write(self):
        with open(self.path, "w") as f:
            f.write("t\tpeer\tsendq\tcwnd\tunacked\tbytes_acked\trtt_ms\tnotsent\n")
            for r in self.rows:
                f.write("\t".join(str(x) for x in r) + "\n")

    def summary(self):
        """Per connection, over samples while it was moving data: the share
        of samples with an empty send queue and the median queue."""
        by_peer = {}
        for r in self.rows:
            by_peer.setdefault(r[1], []).append(r)
        out = {}
        for peer, rows in by_peer.items():
            # Only samples between the first and last change of bytes_acked.
            acked = [r[5] for r in rows]
            first = next((i for i in range(1, len(rows)) if acked[i] != acked[0]), len(rows))
            last = max((i for i in range(1, len(rows)) if acked[i] != acked[i - 1]), default=0)
            live = rows[max(first - 1, 0):last + 1]
            if not live:
                continue
            q = [r[2] for r in live]
            out[peer] = {"samples": len(live), "empty_sendq_share": sum(1 for x in q if x == 0) / len(q),
                         "median_sendq": statistics.median(q), "max_sendq": max(q),
                         "median_cwnd": statistics.median(r[3] for r in live),
                         "median_unacked": statistics.median(r[4] for r in live)}
        return out


def start_seed(a, data, torrent, out):
    if a.seed == "libtorrent":
        p = Proc([PYTHON, LT_PEER, "seed", "--torrent", torrent, "--save-path", os.path.dirname(data),
                  "--timeout", "86400"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                 stderr=open(os.path.join(out, "seed.log"), "wb"))
        line = p.p.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"libtorrent seed did not start: {line!r}")
        return p, int(line.split()[1])
    argv = expand(a.wrap, out=out, n=a.leechers) if a.wrap else []
    argv += [a.actorrent, "seed", torrent, "--data", os.path.dirname(data), "--listen", "127.0.0.1:0",
             "--unchoke-slots", "unlimited", "--stats-json", "-"] + a.extra
    p = Proc(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
             stderr=open(os.path.join(out, "seed.log"), "wb"))
    port = None
    while True:
        line = p.p.stdout.readline()
        if not line:
            raise SystemExit("actorrent seed exited before seeding")
        if not line.startswith("{"):
            continue
        st = json.loads(line)
        port = port or st.get("listen_port")
        if st.get("state") == "seeding":
            break
    threading.Thread(target=p.p.stdout.read, daemon=True).start()
    return p, port


def seed_pid(p, wrapped):
    """The actorrent process itself, also when it runs under a wrapper
    (the wrapper's descendant whose executable is actorrent)."""
    if not wrapped:
        return p.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        todo = [p.pid]
        while todo:
            pid = todo.pop()
            try:
                if os.path.basename(os.path.realpath(f"/proc/{pid}/exe")) == "actorrent":
                    return pid
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
            except OSError:
                pass
        time.sleep(0.05)
    return p.pid


def cmd_seed(a):
    data, torrent = make_source(a.src, a.size_mib * MIB, a.piece_kib * 1024)
    os.makedirs(a.out, exist_ok=True)
    seed, port = start_seed(a, data, torrent, a.out)
    pid = seed_pid(seed, bool(a.wrap) and a.seed == "actorrent")
    log(f"{a.seed} seed pid {pid} port {port}")
    tools, outs, sampler = [], [], None
    try:
        if a.cold:
            subprocess.run(["sync"], check=True)
            open("/proc/sys/vm/drop_caches", "w").write("3\n")
        for cmd in a.attach:
            tools.append(Proc(expand(cmd, out=a.out, pid=pid, n=a.leechers, port=port),
                              stdout=open(os.path.join(a.out, f"attach{len(tools)}.out"), "wb"),
                              stderr=subprocess.STDOUT))
        if tools:
            time.sleep(a.attach_delay)
        if a.ss:
            sampler = SsSampler(port, a.ss_interval / 1000, os.path.join(a.out, "ss.tsv"))
            sampler.start()
        for i in range(a.leechers):
            o = os.path.join(a.out, f"leech{i}")
            shutil.rmtree(o, ignore_errors=True)
            os.makedirs(o)
            outs.append(o)
        cpu0 = cpu_seconds(pid)
        leechers = [subprocess.Popen([PYTHON, LT_PEER, "leech", "--torrent", torrent, "--save-path", o,
                                      "--peer", f"127.0.0.1:{port}", "--no-pex", "--profile", "tuned",
                                      "--timeout", str(a.timeout)] + (["--encryption", "disabled"] if a.plaintext else []),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
                    for o in outs]
        spans = []
        for lp in leechers:
            out, _ = lp.communicate(timeout=a.timeout + 60)
            done = [l for l in out.splitlines() if l.startswith("DONE ")]
            if lp.returncode != 0 or not done:
                raise SystemExit(f"a leecher failed ({lp.returncode})")
            _, _, _, start, end = done[0].split()
            spans.append((float(start), float(end)))
        cpu = cpu_seconds(pid) - cpu0
        if sampler:
            sampler.done.set()
            sampler.join()
            sampler.write()
    finally:
        for t in tools:
            t.interrupt(timeout=300)
        if a.seed == "libtorrent":
            stop_lt_seed(seed)
        else:
            seed.interrupt()
        for o in outs:
            shutil.rmtree(o, ignore_errors=True)
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    served = a.leechers * a.size_mib * MIB
    res = {"seed": a.seed, "port": port, "leechers": a.leechers, "mb_s": served / span / 1e6, "span_s": span,
           "cpu_s_per_gib": cpu / (served / GIB), "load": os.getloadavg()[0]}
    if sampler:
        res["ss"] = sampler.summary()
    log(json.dumps(res))
    json.dump(res, open(os.path.join(a.out, "seed.json"), "w"), indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("leech", "seed"):
        c = sub.add_parser(name)
        c.add_argument("--src", required=True, help="where the payload is made once and reused")
        c.add_argument("--out", required=True, help="output directory for this run")
        c.add_argument("--size-mib", type=int, default=1024)
        c.add_argument("--piece-kib", type=int, default=256)
        c.add_argument("--actorrent", default=os.path.join(REPO, "target", "release", "actorrent"))
        c.add_argument("--wrap", default="", help="command prefix for actorrent ({out}, {n})")
        c.add_argument("--env", action="append", default=[], help="K=V for actorrent's environment")
        c.add_argument("--timeout", type=float, default=600)
        c.add_argument("extra", nargs="*", help="more actorrent arguments (after --)")
    sub.choices["leech"].add_argument("--runs", type=int, default=1)
    sub.choices["leech"].add_argument("--keep-download", action="store_true")
    s = sub.choices["seed"]
    s.add_argument("--seed", choices=("actorrent", "libtorrent"), default="actorrent")
    s.add_argument("--leechers", type=int, default=1)
    s.add_argument("--attach", action="append", default=[],
                   help="command run against the seed during the trial ({pid}, {port}, {out}, {n}), "
                        "e.g. tcpdump -i lo -s 96 -B 65536 -w {out}/seed.pcap tcp port {port}")
    s.add_argument("--attach-delay", type=float, default=1.0, help="seconds for attach tools to start")
    s.add_argument("--ss", action="store_true", help="sample ss -tin of the seed's connections")
    s.add_argument("--ss-interval", type=float, default=10, help="ms between ss samples")
    s.add_argument("--cold", action="store_true", help="drop the page cache before the trial")
    s.add_argument("--plaintext", action="store_true",
                   help="leechers handshake in plaintext (no MSE attempt and 1 s fallback)")
    a = ap.parse_args()
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    (cmd_leech if a.cmd == "leech" else cmd_seed)(a)


if __name__ == "__main__":
    main()
