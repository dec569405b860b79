"""The lab's building blocks: processes in namespaces, the lab session
(work directory, payloads, undo stack) and one swarm run (network,
tracker, seed, leechers), shared by the benchmark (lab.py bench), the
faults (faults.py) and the CI run.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

import labnet
import torrentfile
from labnet import log, sh

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
PORT = 6881
# The one libtorrent helper, shared with the tests and the other benchmarks.
LT_PEER = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "support", "lt_peer.py")
TRACKER_ADDR = "198.18.1.1"
TRACKER_PORT = 6969
SEED_ADDR = "198.18.1.2"
EXTRA_ADDR = "198.18.1.3"

# up / down in Mbit/s, one-way delay and jitter in ms, loss in 1/1000.
SCENARIOS = {
    "lan": dict(seed=(100, 100), leech=(100, 100), delay=0.5, jitter=0, loss=0, mtu=9000, raw=False,
                what="LAN: 100 Mbit/s links, 0.5 ms"),
    "wan": dict(seed=(20, 20), leech=(20, 20), delay=40, jitter=10, loss=5, mtu=1500, raw=False,
                what="WAN: 20 Mbit/s, 40 +- 10 ms one way, 0.5 % loss"),
    "asym": dict(seed=(100, 100), leech=(20, 100), delay=0.5, jitter=0, loss=0, mtu=9000, raw=False,
                 what="asymmetric: seed 100 Mbit/s, leechers 20 up / 100 down, 0.5 ms"),
    "raw": dict(seed=(100, 100), leech=(100, 100), delay=0.5, jitter=0, loss=0, mtu=9000, raw=True,
                what="raw image: LAN links, sparse image (50 % zero extents), --raw-target"),
}


def ideal(sc, size, n):
    """Lower bounds (seconds) for the first and the last leecher to finish:
    every byte leaves the seed at least once (size / seed_up), every
    leecher takes in the whole payload (size / leech_down), and the N
    copies are carried by the seed's and the leechers' uplinks together
    (N * size / (seed_up + N * leech_up)). The first leecher is bound by
    the first two only."""
    bits = size * 8
    su = sc["seed"][0] * 1e6
    lu, ld = sc["leech"][0] * 1e6, sc["leech"][1] * 1e6
    first = max(bits / su, bits / ld)
    last = max(first, n * bits / (su + n * lu))
    return first, last



# ------------------------------------------------------------------ processes


class Proc:
    """A process in a lab namespace: bounded, killable, with its CPU time
    (wait4 rusage) and its JSON-lines stats file followed as it grows."""

    def __init__(self, lab, name, ns, argv, stats=None, env=None, log_path=None):
        self.name = name
        self.stats_path = stats
        self.lines = []
        self._off = 0
        self.rc = None
        self.cpu = None
        self.vm_hwm_kib = None
        self.t_start = time.monotonic()
        self.complete_at = None
        self.log_path = log_path or os.path.join(lab.workdir, f"{name}.log")
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        # Plain log lines (tracing colours them otherwise, even into a file).
        full_env["NO_COLOR"] = "1"
        full_env.update(env or {})
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns] + [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=full_env,
            start_new_session=True,
        )
        self.pid = self.p.pid
        lab.procs.append(self)

    def _reaped(self, status, ru):
        self.rc = os.waitstatus_to_exitcode(status)
        self.cpu = ru.ru_utime + ru.ru_stime
        self.p.returncode = self.rc
        self._log.close()

    def alive(self):
        if self.rc is None:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status, ru)
        return self.rc is None

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def read_hwm(self):
        """Peak resident memory so far (VmHWM), KiB, while it runs."""
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmHWM:"):
                    self.vm_hwm_kib = int(line.split()[1])
        except OSError:
            pass
        return self.vm_hwm_kib

    def kill9(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.wait(10)

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.alive():
            self.read_hwm()
            os.kill(self.pid, signal.SIGTERM)
            if not self.wait(timeout):
                log(f"{self.name}: no exit {timeout} s after SIGTERM; killing")
                self.kill9()
        self.poll_stats()

    def poll_stats(self):
        """Reads new stats lines; returns the newest object or None."""
        if not self.stats_path or not os.path.exists(self.stats_path):
            return None
        with open(self.stats_path, "rb") as f:
            f.seek(self._off)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._off += end
        for raw in data[:end].splitlines():
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            obj["_t"] = time.monotonic()
            obj["_wall"] = time.time()
            self.lines.append(obj)
            if obj.get("event") == "complete" and self.complete_at is None:
                self.complete_at = obj["_t"]
        return self.lines[-1] if self.lines else None

    @property
    def last(self):
        return self.lines[-1] if self.lines else {}

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------ the lab


class Lab:
    """One lab session: a work directory (on a tmpfs by default), payloads,
    and the undo stack of everything made."""

    def __init__(self, args):
        self.args = args
        self.prefix = args.prefix
        self.undo = labnet.Undo()
        self.procs = []
        self.payloads = {}
        self.features = None
        self.workdir = None
        self.results = []

    def check_prerequisites(self):
        if os.geteuid() != 0:
            return "not root (network namespaces need CAP_SYS_ADMIN)"
        for tool in ("ip", "tc", "nft", "opentracker"):
            if shutil.which(tool) is None:
                return f"`{tool}` is not installed"
        probe = sh("ip", "netns", "add", f"{self.prefix}-canary", check=False)
        if probe.returncode != 0:
            return f"cannot create a network namespace: {probe.stderr.strip()}"
        sh("ip", "netns", "del", f"{self.prefix}-canary", check=False)
        return None

    def setup(self, fs_mib):
        left = labnet.existing_namespaces(self.prefix)
        if left:
            raise SystemExit(
                f"namespaces {', '.join(left)} exist: another lab is running or one was interrupted "
                f"(`lab.py cleanup --prefix {self.prefix}` removes them)"
            )
        base = self.args.workdir or tempfile.mkdtemp(prefix=f"{self.prefix}-")
        os.makedirs(base, exist_ok=True)
        self.workdir = base
        if not self.args.keep and not self.args.workdir:
            self.undo.push(f"rm {base}", lambda: shutil.rmtree(base, ignore_errors=True))
        if self.args.storage == "tmpfs":
            fs = os.path.join(base, "fs")
            os.makedirs(fs, exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", f"size={fs_mib}m", "lab", fs)
            self.undo.push(f"umount {fs}", lambda: sh("umount", "-l", fs, check=False))
            self.data = fs
        else:
            self.data = os.path.join(base, "data")
            os.makedirs(self.data, exist_ok=True)
        self.features = labnet.probe_features(self.prefix)
        log("kernel features:", " ".join(f"{k}={'yes' if v else 'no'}" for k, v in self.features.items()))
        mode = self.args.delay_with
        if mode == "auto":
            mode = "netem" if self.features.get("netem") else "delayline"
        if mode == "delayline" and not self.features.get("tun"):
            raise SystemExit("no netem and no TUN: the lab cannot add latency here")
        if not self.features.get("htb"):
            raise SystemExit("no htb qdisc: the lab cannot shape rates here")
        self.delay_with = mode
        log(f"latency and jitter by: {mode}; rates by: htb; loss by: nftables numgen")

    def cleanup(self):
        """Every process first (they hold files open), then the rest."""
        self.kill_all()
        self.undo.run()

    def kill_all(self):
        for p in self.procs:
            try:
                if p.alive():
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)
            except (OSError, ChildProcessError):
                pass

    # -------------------------------------------------------------- payloads

    def payload(self, size, raw):
        """A random payload of `size` bytes (raw: a sparse image of twice
        that with `size` bytes of data in extents between zero gaps) and
        its torrent, made once per session."""
        key = (size, raw)
        if key in self.payloads:
            return self.payloads[key]
        d = os.path.join(self.data, f"src-{size >> 20}m{'-raw' if raw else ''}")
        os.makedirs(d, exist_ok=True)
        rng = random.Random(self.args.seed)
        if raw:
            path = os.path.join(d, "disk.img")
            image = 2 * size
            mib = 1 << 20
            with open(path, "wb") as f:
                f.truncate(image)
                pos, data_left = 0, size
                while data_left > 0:
                    # Runs of 1-8 MiB of data, then a gap of zeros about as
                    # long, so half the image is zero extents.
                    n = min(rng.randint(1, 8) * mib, data_left)
                    f.seek(pos)
                    f.write(os.urandom(n))
                    data_left -= n
                    pos += n + rng.randint(1, 8) * mib
                    pos = min(pos, image - data_left) if data_left else pos
            extra = ["--raw", path, "--granularity", str(mib)]
        else:
            path = os.path.join(d, "payload.bin")
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 16 << 20)
                    f.write(os.urandom(n))
                    left -= n
            extra = [path]
        tor = os.path.join(d, "payload.torrent")
        sh(self.args.actorrent, "create", *extra, "--output", tor,
           "--tracker", f"http://{TRACKER_ADDR}:{TRACKER_PORT}/announce",
           "--piece-size", f"{self.args.piece_kib}K", timeout=300, capture=True)
        t = torrentfile.Torrent(tor)
        offsets = [int(name, 16) for name, _ in t.files] if raw else None
        entry = dict(path=path, dir=d, torrent=tor, meta=t, raw=raw, offsets=offsets,
                     image_size=os.path.getsize(path))
        self.payloads[key] = entry
        return entry


# ----------------------------------------------------------------- a swarm


class Swarm:
    """One run: a fresh network, a tracker, a seed and N leechers of one
    client. Everything it made is removed by `close`."""

    def __init__(self, lab, client, sc, n, size, extra_host=False, log_level=None, env=None, leech_links=None,
                 tag=None):
        self.lab = lab
        # Name of the logs copied out by `close` when the lab runs --keep.
        self.tag = tag
        self.client = client
        self.sc = sc
        self.n = n
        self.size = size
        self.pl = lab.payload(size, sc["raw"])
        self.t = self.pl["meta"]
        self.undo = labnet.Undo()
        self.net = labnet.Net(
            lab.prefix, self.undo, lab.args.mtu or sc["mtu"], sc["delay"], sc["jitter"], sc["loss"],
            lab.delay_with, lab.args.delayline, lab.workdir, seed=lab.args.seed,
        )
        self.log_level = log_level or lab.args.log_level
        # The tracker is the only source of peers (as for libtorrent here);
        # the DHT would also try to resolve bootstrap hosts outside the lab.
        self.env = {"ACTORRENT_DHT_ENABLED": "false"}
        self.env.update(env or {})
        for kv in lab.args.actorrent_env:
            k, _, v = kv.partition("=")
            self.env[k] = v
        specs = [("t", TRACKER_ADDR, labnet.Link())]
        specs.append(("s", SEED_ADDR, labnet.Link(*sc["seed"])))
        if extra_host:
            specs.append(("x", EXTRA_ADDR, labnet.Link(*sc["seed"])))
        links = leech_links or {}
        for i in range(n):
            specs.append((self.lname(i), f"198.18.2.{i + 1}", links.get(i, labnet.Link(*sc["leech"]))))
        self.run_dir = os.path.join(lab.data, f"run-{len(lab.results)}-{int(time.time())}")
        os.makedirs(self.run_dir)
        self.undo.push("run dir", lambda: shutil.rmtree(self.run_dir, ignore_errors=True))
        try:
            self.net.start(specs)
        except BaseException:
            # No caller holds this swarm yet: undo what the network made.
            self.undo.run()
            raise
        self.tracker = None
        self.seed = None
        self.leechers = [None] * n
        self.runs = [0] * n

    @staticmethod
    def lname(i):
        return f"l{i + 1:02d}"

    def host_dir(self, name):
        d = os.path.join(self.run_dir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def close(self):
        for p in [self.tracker, self.seed] + self.leechers:
            if p is not None:
                p.kill9()
        if self.lab.args.keep and self.tag:
            keep_logs(self.lab, self, self.tag)
        self.undo.run()

    # ------------------------------------------------------------ tracker

    def start_tracker(self):
        d = self.host_dir("t")
        with open(os.path.join(d, "whitelist"), "w") as f:
            f.write(self.t.info_hash + "\n")
        self.tracker = Proc(self.lab, "tracker", self.net.ns("t"),
                            ["opentracker", "-i", TRACKER_ADDR, "-p", TRACKER_PORT, "-P", TRACKER_PORT,
                             "-w", "whitelist", "-d", d])
        # The Debian build chroots into -d and loads the whitelist in a
        # thread: ready once a scrape names the hash (a probe announce
        # would leave a fake peer behind).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.scrape() is not None:
                return
            if not self.tracker.alive():
                raise RuntimeError("opentracker exited: " + self.tracker.log_tail())
            time.sleep(0.2)
        raise RuntimeError("opentracker did not answer")

    def scrape(self):
        """(complete, incomplete) for the torrent, from the tracker host."""
        code = (
            "import sys,urllib.request,urllib.parse\n"
            "h=bytes.fromhex(sys.argv[2])\n"
            "u=sys.argv[1]+'?info_hash='+urllib.parse.quote_from_bytes(h)\n"
            "sys.stdout.write(urllib.request.urlopen(u,timeout=3).read().hex())\n"
        )
        r = sh("ip", "netns", "exec", self.net.ns("t"), PY, "-c", code,
               f"http://{TRACKER_ADDR}:{TRACKER_PORT}/scrape", self.t.info_hash, check=False, capture=True, timeout=10)
        if r.returncode != 0 or not r.stdout:
            return None
        try:
            d, _ = torrentfile.bdecode(bytes.fromhex(r.stdout))
            # opentracker lists only torrents that have peers.
            f = d[b"files"].get(bytes.fromhex(self.t.info_hash), {})
            return f.get(b"complete", 0), f.get(b"incomplete", 0)
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    # ------------------------------------------------------------- peers

    def target_of(self, name):
        """Where a host keeps the payload: (argv piece, paths to verify)."""
        d = self.host_dir(name)
        if self.pl["raw"] and self.client == "actorrent":
            img = os.path.join(d, "disk.img")
            if not os.path.exists(img):
                # Sized as the source, as README says to, so the copy can be
                # compared whole (trailing zeros included).
                with open(img, "wb") as f:
                    f.truncate(self.pl["image_size"])
            return ["--raw-target", img], (img, self.pl["offsets"])
        out = os.path.join(d, "out")
        os.makedirs(out, exist_ok=True)
        if self.pl["raw"]:  # libtorrent: the extents as files
            paths = [os.path.join(out, self.t.name, f) for f, _ in self.t.files]
        elif self.t.files[0][0] is None:
            paths = [os.path.join(out, self.t.name)]
        else:
            paths = [os.path.join(out, self.t.name, f) for f, _ in self.t.files]
        return ["--output", out], paths

    def start_seed(self):
        d = self.host_dir("s")
        stats = os.path.join(d, "stats.jsonl")
        if self.client == "actorrent":
            if self.pl["raw"]:
                where = ["--raw-target", self.pl["path"]]
            else:
                where = ["--data", os.path.dirname(self.pl["path"])]
            argv = [self.lab.args.actorrent, "seed", self.pl["torrent"], *where,
                    "--listen", f"0.0.0.0:{PORT}", "--stats-json", stats, "--log-level", self.log_level,
                    "--resume-file", os.path.join(d, "seed.resume")]
        else:
            save = os.path.join(d, "data")
            os.makedirs(save, exist_ok=True)
            if self.pl["raw"]:
                # libtorrent reads the extents as files named by offset.
                base = os.path.join(save, self.t.name)
                os.makedirs(base, exist_ok=True)
                with open(self.pl["path"], "rb") as src:
                    for (fname, length), off in zip(self.t.files, self.pl["offsets"]):
                        src.seek(off)
                        with open(os.path.join(base, fname), "wb") as f:
                            f.write(src.read(length))
            else:
                os.link(self.pl["path"], os.path.join(save, self.t.name))
            argv = [PY, LT_PEER, "seed", "--torrent", self.pl["torrent"],
                    "--save-path", save, "--stats", stats, "--profile", "default-tcp", "--listen", f"0.0.0.0:{PORT}", "--timeout", self.lab.args.timeout + 120]
        self.seed = Proc(self.lab, "seed", self.net.ns("s"), argv, stats=stats, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = self.seed.poll_stats()
            if s and s.get("state") == "seeding":
                break
            if not self.seed.alive():
                raise RuntimeError("seed exited: " + self.seed.log_tail())
            time.sleep(0.1)
        else:
            raise RuntimeError("seed did not start seeding")
        # The leechers must find it: wait until the tracker lists it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = self.scrape()
            if s and s[0] >= 1:
                return
            time.sleep(0.2)
        raise RuntimeError("the tracker never listed the seed")

    def start_leecher(self, i, env=None):
        name = self.lname(i)
        d = self.host_dir(name)
        k = self.runs[i]
        self.runs[i] += 1
        stats = os.path.join(d, f"stats.{k}.jsonl")
        where, _ = self.target_of(name)
        e = dict(self.env)
        e.update(env or {})
        if self.client == "actorrent":
            argv = [self.lab.args.actorrent, "download", self.pl["torrent"], *where,
                    "--listen", f"0.0.0.0:{PORT}", "--seed-after", "--stats-json", stats,
                    "--log-level", self.log_level]
        else:
            argv = [PY, LT_PEER, "leech", "--torrent", self.pl["torrent"],
                    "--save-path", where[1], "--stats", stats, "--profile", "default-tcp", "--listen", f"0.0.0.0:{PORT}", "--stay", "--timeout", self.lab.args.timeout + 120]
        p = Proc(self.lab, f"{name}.{k}", self.net.ns(name), argv, stats=stats, env=e,
                 log_path=os.path.join(d, f"log.{k}"))
        self.leechers[i] = p
        return p

    def resume_path(self, i):
        name = self.lname(i)
        if self.pl["raw"]:
            return os.path.join(self.host_dir(name), "disk.img.actorrent-resume")
        return os.path.join(self.host_dir(name), "out", ".actorrent", f"{self.t.info_hash}.resume")

    def verified_on_disk(self, i):
        return torrentfile.verified_pieces(self.t, self.target_of(self.lname(i))[1])

    def identical(self, i):
        """(ok, detail): the host's copy equals the source byte for byte;
        for a raw image, its holes also stayed holes."""
        _, paths = self.target_of(self.lname(i))
        if isinstance(paths, tuple):
            img = paths[0]
            if os.path.getsize(img) != self.pl["image_size"]:
                return False, f"size {os.path.getsize(img)} != {self.pl['image_size']}"
            if not same_bytes(img, self.pl["path"]):
                return False, "bytes differ"
            allocated = os.stat(img).st_blocks * 512
            data = self.t.total_length
            if allocated > data + (4 << 20):
                return False, f"{allocated} bytes allocated for {data} of data: zero regions were written"
            return True, f"image equal; {allocated >> 20} MiB allocated for {data >> 20} MiB of data"
        if self.pl["raw"]:
            with open(self.pl["path"], "rb") as src:
                for (fname, length), off, p in zip(self.t.files, self.pl["offsets"], paths):
                    src.seek(off)
                    if not os.path.exists(p) or open(p, "rb").read() != src.read(length):
                        return False, f"extent {fname} differs"
            return True, "every extent equal"
        if not os.path.exists(paths[0]):
            return False, "no output"
        return (same_bytes(paths[0], self.pl["path"]), "")

    def poll(self):
        for p in [self.seed] + self.leechers:
            if p is not None:
                p.poll_stats()

    def wait_complete(self, which, timeout, tick=None):
        """Waits until every leecher in `which` has completed. Returns the
        ones that did not (empty on success). A leecher that exits before
        completing is reported at once."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if tick:
                tick()
            pending = [i for i in which if self.leechers[i].complete_at is None]
            if not pending:
                return []
            dead = [i for i in pending if not self.leechers[i].alive()]
            if dead:
                self.poll()
                return [i for i in pending if self.leechers[i].complete_at is None]
            if time.monotonic() > deadline:
                return pending
            time.sleep(0.1)

    def stop_all(self):
        for p in self.leechers + [self.seed]:
            if p is not None:
                p.stop()


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 << 20), fb.read(8 << 20)
            if x != y:
                return False
            if not x:
                return True



def machine_cpu():
    """(busy, total) jiffies of the whole machine so far (/proc/stat)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def busy_fraction(before, after):
    """Share of the machine's CPU time that was busy between two samples."""
    db, dt = after[0] - before[0], after[1] - before[1]
    return db / dt if dt else 0.0


def proc_cpu(pid):
    """utime + stime so far of a running process, seconds."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def keep_logs(lab, sw, tag):
    """Copies stats and logs (not payloads) out of the run directory."""
    dst = os.path.join(lab.workdir, "logs", tag)
    for root, _, files in os.walk(sw.run_dir):
        for f in files:
            if f.endswith(".jsonl") or f.startswith("log") or f.endswith(".log") or f.endswith(".json"):
                rel = os.path.relpath(os.path.join(root, f), sw.run_dir)
                os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
                shutil.copy(os.path.join(root, f), os.path.join(dst, rel))
    for f in ("delayline.out", "delayline.err"):
        src = os.path.join(lab.workdir, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(dst, f))


