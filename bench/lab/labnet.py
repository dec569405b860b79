"""The lab's network: namespaces, links, shaping, delay and loss, and the
undo stack that removes all of it.

Topology (one star, so one place sees every packet between two hosts):

    host ns  eth0 198.18.x.y/32 --veth-- v-NAME  router ns  --> dl0 (TUN)
                                                             <-- delayline

Every host namespace has one veth to the router namespace, an address from
198.18.0.0/15 (RFC 2544, benchmarking) and a route for that /15 only: no
default route, so nothing outside the namespaces is ever reachable. The
router forwards host-to-host packets into a TUN device (policy routing:
packets from 198.18.0.0/15 that did not come out of the TUN go to it), the
delayline program holds each for its delay and writes it back, and the
kernel routes it on to its destination. Where the kernel has netem, netem
on the router's side of each host link does the delaying instead.

Rates: htb on each link's two ends (the host's eth0 egress is its uplink,
the router's v-NAME egress its downlink), with a byte-limited FIFO under
it. Loss: one nftables rule in the router, `numgen random mod 1000 < N
drop`, on packets as they leave the delay line (each packet is seen there
once, and segmented to the MTU: the TUN takes no offloads).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

NET = "198.18.0.0/15"
ROUTER_ADDR = "198.18.0.1"
TUN = "dl0"


def log(*args):
    print("[lab]", *args, file=sys.stderr, flush=True)


def sh(*cmd, check=True, timeout=30, capture=False, input=None):
    """Runs one command, bounded in time."""
    r = subprocess.run(
        [str(c) for c in cmd],
        check=False,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        input=input,
        text=True,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}: {r.stderr.strip()}")
    return r


class Undo:
    """What the lab made, undone in reverse order on every exit path."""

    def __init__(self):
        self.steps = []

    def push(self, what, fn):
        self.steps.append((what, fn))

    def run(self):
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:  # keep undoing the rest
                log(f"cleanup: {what}: {e}")


def install_signal_handlers():
    """SIGINT, SIGTERM and SIGHUP become SystemExit, so `finally` blocks
    (and with them the undo stack) run."""

    def handler(signum, _frame):
        signal.signal(signum, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


# ---------------------------------------------------------------- features


def probe_features(prefix):
    """Which shaping tools this kernel offers, tried in a scratch namespace."""
    ns = f"{prefix}-probe"
    feats = {}
    if not os.path.exists("/dev/net/tun"):
        feats["tun"] = False
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        feats["veth"] = sh("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False).returncode == 0
        if not feats["veth"]:
            return feats
        sh("ip", "-n", ns, "link", "set", "p0", "up")

        def tc_ok(*args):
            ok = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "p0", "root", *args, check=False).returncode == 0
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "p0", "root", check=False)
            return ok

        feats["netem"] = tc_ok("netem", "delay", "1ms")
        feats["htb"] = tc_ok("handle", "1:", "htb")
        feats["tbf"] = tc_ok("tbf", "rate", "1mbit", "burst", "32k", "latency", "50ms")
        feats["fq"] = tc_ok("fq")
        nft = ["ip", "netns", "exec", ns, "nft"]
        base = sh(*nft, "add table ip t; add chain ip t c { type filter hook forward priority 0; }", check=False)
        feats["nftables"] = base.returncode == 0
        feats["nft_numgen"] = feats["nftables"] and sh(*nft, "add rule ip t c numgen random mod 1000 < 5 drop", check=False).returncode == 0
        feats["nft_queue"] = feats["nftables"] and sh(*nft, "add rule ip t c queue num 0 bypass", check=False).returncode == 0
        feats["iptables_NFQUEUE"] = (
            shutil.which("iptables") is not None
            and sh("ip", "netns", "exec", ns, "iptables", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", "0", check=False).returncode == 0
        )
        feats["tun"] = sh("ip", "-n", ns, "tuntap", "add", "dev", "t0", "mode", "tun", check=False).returncode == 0
        feats["bridge"] = sh("ip", "-n", ns, "link", "add", "b0", "type", "bridge", check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return feats


def existing_namespaces(prefix):
    out = sh("ip", "netns", "list", capture=True, check=False).stdout or ""
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n == prefix or n.startswith(prefix + "-")]


# ------------------------------------------------------------------ network


class Link:
    """Shaping of one host's link, Mbit/s each way (None: unshaped)."""

    def __init__(self, up=None, down=None):
        self.up = up
        self.down = down


class Net:
    """The lab's namespaces and links. Hosts are added before `start`."""

    def __init__(self, prefix, undo, mtu, delay_ms, jitter_ms, loss_permille, delay_with, delayline_bin, workdir, seed=1):
        self.prefix = prefix
        self.undo = undo
        self.mtu = mtu
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.loss_permille = loss_permille
        self.delay_with = delay_with  # "netem" | "delayline"
        self.delayline_bin = delayline_bin
        self.workdir = workdir
        self.seed = seed
        self.router = f"{prefix}-r"
        self.hosts = {}  # name -> (ns, addr, link)
        self.delayline = None
        self.delayline_report = None

    def ns(self, name):
        return self.hosts[name][0]

    def addr(self, name):
        return self.hosts[name][1]

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.undo.push(f"netns {ns}", lambda: sh("ip", "netns", "del", ns, check=False))
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # No IPv6: the lab is IPv4-only and router solicitations are noise.
        for key in ("all", "default"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)

    def start(self, host_specs):
        """host_specs: list of (name, addr, Link)."""
        self._add_ns(self.router)
        r = self.router
        for key, val in (
            ("net.ipv4.ip_forward", 1),
            ("net.ipv4.conf.all.rp_filter", 0),
            ("net.ipv4.conf.default.rp_filter", 0),
        ):
            sh("ip", "netns", "exec", r, "sysctl", "-qw", f"{key}={val}")
        for name, addr, link in host_specs:
            ns = f"{self.prefix}-{name}"
            self._add_ns(ns)
            dev = f"v-{name}"[:15]
            sh("ip", "-n", r, "link", "add", dev, "mtu", self.mtu, "type", "veth", "peer", "name", "eth0", "mtu", self.mtu, "netns", ns)
            sh("ip", "-n", r, "addr", "add", f"{ROUTER_ADDR}/32", "dev", dev)
            sh("ip", "-n", r, "link", "set", dev, "up")
            sh("ip", "netns", "exec", r, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
            sh("ip", "-n", r, "route", "add", f"{addr}/32", "dev", dev, "src", ROUTER_ADDR)
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", f"{ROUTER_ADDR}/32", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", NET, "via", ROUTER_ADDR, "dev", "eth0", "src", addr)
            self.hosts[name] = (ns, addr, link)
            netem = self.delay_with == "netem" and (self.delay_ms > 0 or self.jitter_ms > 0)
            shape(ns, "eth0", link.up, self.mtu, self.delay_ms)
            shape(r, dev, link.down, self.mtu, self.delay_ms,
                  netem=(self.delay_ms, self.jitter_ms) if netem else None)
        if self.delay_with == "delayline":
            self._start_delayline()
        if self.loss_permille > 0:
            self._add_loss()

    def _start_delayline(self):
        r = self.router
        sh("ip", "-n", r, "tuntap", "add", "dev", TUN, "mode", "tun")
        sh("ip", "-n", r, "link", "set", TUN, "mtu", self.mtu, "up")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", f"net.ipv4.conf.{TUN}.rp_filter=0")
        # Out of the delay line: the normal routes to each host.
        sh("ip", "-n", r, "rule", "add", "iif", TUN, "lookup", "main", "pref", "100")
        # Everything else between lab hosts: into the delay line.
        sh("ip", "-n", r, "rule", "add", "from", NET, "lookup", "100", "pref", "200")
        sh("ip", "-n", r, "route", "add", NET, "dev", TUN, "table", "100")
        # A queue of 200 ms at the highest rate the lab drives through it,
        # in packets of the MTU (the queue is counted in packets).
        cap = max(4096, int(2e9 / 8 * 0.2 / self.mtu))
        # Real-time priority where allowed: the delay line is the lab's
        # wire, and on a loaded machine an ordinary process wakes
        # milliseconds late (measured: 1.5 ms mean on a 0.5 ms delay at a
        # load of 8 on 2 cores). It sleeps in ppoll when idle, and the
        # kernel caps real-time tasks at 95 % of the CPU.
        rt = ["chrt", "-f", "10"] if shutil.which("chrt") else []
        cmd = [
            "ip", "netns", "exec", r, *rt, self.delayline_bin,
            "--tun", TUN,
            "--delay-us", int(self.delay_ms * 1000),
            "--jitter-us", int(self.jitter_ms * 1000),
            "--mtu", self.mtu,
            "--capacity", cap,
            "--max-seconds", 4 * 3600,
            "--seed", self.seed,
        ]
        out = open(os.path.join(self.workdir, "delayline.out"), "w+")
        err = open(os.path.join(self.workdir, "delayline.err"), "w")
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        self.delayline = (p, out)

        def stop():
            self.stop_delayline()

        self.undo.push("delayline", stop)
        deadline = time.monotonic() + 10
        while True:
            out.seek(0)
            if "ready" in out.read():
                break
            if p.poll() is not None or time.monotonic() > deadline:
                err.flush()
                raise RuntimeError("delayline did not start: " + open(err.name).read().strip())
            time.sleep(0.02)

    def stop_delayline(self):
        """Stops the delay line and keeps its counters (JSON) for the report."""
        if self.delayline is None:
            return self.delayline_report
        p, out = self.delayline
        self.delayline = None
        cpu = None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    cpu = ru.ru_utime + ru.ru_stime
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    p.wait(5)
                    break
                time.sleep(0.02)
        out.seek(0)
        for line in out.read().splitlines():
            if line.startswith("{"):
                self.delayline_report = json.loads(line)
        if self.delayline_report is not None:
            self.delayline_report["cpu_s"] = cpu
        return self.delayline_report

    def _add_loss(self):
        where = f'iifname "{TUN}"' if self.delay_with == "delayline" else ""
        rules = (
            "add table ip lab\n"
            "add chain ip lab lossy { type filter hook forward priority 0; policy accept; }\n"
            f"add rule ip lab lossy {where} numgen random mod 1000 < {int(self.loss_permille)} counter drop\n"
        )
        sh("ip", "netns", "exec", self.router, "nft", "-f", "-", input=rules)

    def loss_counter(self):
        """Packets the loss rule dropped so far."""
        if self.loss_permille <= 0:
            return 0
        out = sh("ip", "netns", "exec", self.router, "nft", "-j", "list", "table", "ip", "lab", capture=True, check=False).stdout
        try:
            for item in json.loads(out)["nftables"]:
                rule = item.get("rule")
                if rule:
                    for e in rule["expr"]:
                        if "counter" in e:
                            return e["counter"]["packets"]
        except (ValueError, KeyError):
            pass
        return None

    def set_rate(self, name, up=None, down=None):
        """Reshapes one host's link (for a fault that slows one host)."""
        ns, addr, link = self.hosts[name]
        dev = f"v-{name}"[:15]
        if up is not None:
            shape(ns, "eth0", up, self.mtu, self.delay_ms, replace=True)
            link.up = up
        if down is not None:
            netem = (self.delay_ms, self.jitter_ms) if self.delay_with == "netem" and self.delay_ms > 0 else None
            shape(self.router, dev, down, self.mtu, self.delay_ms, netem=netem, replace=True)
            link.down = down


def shape(ns, dev, mbit, mtu, delay_ms, netem=None, replace=False):
    """htb at `mbit` on `dev`'s egress, a byte FIFO (or netem) under it."""
    ex = ["ip", "netns", "exec", ns, "tc"]
    if replace:
        sh(*ex, "qdisc", "del", "dev", dev, "root", check=False)
    if mbit is None and netem is None:
        return
    rate = f"{mbit}mbit" if mbit else "10gbit"
    bps = (mbit or 10000) * 1e6 / 8
    # Bursts of 1 ms or two packets; GSO packets from a local socket can be
    # 64 KiB, which htb lets through by borrowing tokens.
    burst = max(2 * mtu, int(bps * 0.001), 16384)
    sh(*ex, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
    sh(*ex, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
       "rate", rate, "ceil", rate, "burst", burst, "cburst", burst, "quantum", max(mtu + 100, 1600))
    # Queue: 50 ms at the link rate, or twice the one-way delay when larger
    # (about one bandwidth-delay product), at least 64 KiB.
    limit = max(65536, int(bps * max(0.05, 2 * delay_ms / 1000)))
    if netem is not None:
        d, j = netem
        pkts = max(1000, limit // max(mtu, 1))
        args = ["delay", f"{d}ms"] + ([f"{j}ms"] if j else []) + ["limit", pkts]
        sh(*ex, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem", *args)
    else:
        sh(*ex, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "bfifo", "limit", limit)


def qdisc_drops(ns, dev):
    """Packets dropped by the qdiscs of `dev` (queue overflow)."""
    out = sh("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev, capture=True, check=False).stdout or ""
    drops = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Sent") and "dropped" in line:
            try:
                drops = max(drops, int(line.split("dropped")[1].split(",")[0]))
            except (IndexError, ValueError):
                pass
    return drops
