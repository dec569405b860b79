#!/usr/bin/python3
"""Daemon scale benchmark: N small torrents, seeding from local data, in one
`actorrent daemon` (and, when installed, one `transmission-daemon` with the
same torrents), driven through the Transmission RPC on 127.0.0.1.

Per daemon, in one run:

  add/s          torrent-add rate (metainfo in base64, one request each)
  first seed s   from the first add to every torrent seeding (data checked
                 once: there is no resume data yet)
  RSS idle MiB   VmRSS once every torrent seeds and 5 s have passed
  KiB/torrent    (RSS idle - RSS of the same daemon with no torrent) / N
  CPU idle %     CPU time over 10 s of idling, in % of one core
  get ms         torrent-get of every torrent with Sonarr's field list:
                 median and p99 of --gets calls, and the response size
  fds idle       open descriptors of the daemon (/proc/PID/fd) at idle
  restart s      SIGTERM, start again: spawn to every torrent seeding
  fds restart    open descriptors once every torrent seeds again
  rechecked      pieces rechecked after the restart (actorrent: from its
                 log; should be 0)

Payloads are random (64 KiB, 16 KiB pieces) and written under the download
directory first, so every torrent is complete. Run after
`cargo build --release`: `nice -n 10 /usr/bin/python3 bench/daemon/run.py
--torrents 1000`.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SONARR_FIELDS = [
    "id", "hashString", "name", "downloadDir", "totalSize", "leftUntilDone",
    "isFinished", "eta", "status", "secondsDownloading", "secondsSeeding",
    "errorString", "uploadedEver", "downloadedEver", "seedRatioLimit",
    "seedRatioMode", "seedIdleLimit", "seedIdleMode", "fileCount", "labels",
]


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, str):
        return bencode(v.encode())
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(v)


def make_torrents(n, dl, size, piece):
    out = []
    for i in range(n):
        name = "t%05d.bin" % i
        data = os.urandom(size)
        with open(os.path.join(dl, name), "wb") as f:
            f.write(data)
        pieces = b"".join(hashlib.sha1(data[o:o + piece]).digest() for o in range(0, size, piece))
        meta = bencode({"info": {"name": name, "length": size, "piece length": piece, "pieces": pieces}})
        out.append(meta)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Rpc:
    def __init__(self, port):
        self.port = port
        self.sid = ""

    def call(self, method, args=None):
        body = json.dumps({"method": method, "arguments": args or {}})
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request("POST", "/transmission/rpc", body,
                      {"X-Transmission-Session-Id": self.sid, "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            c.close()
            if r.status == 409:
                self.sid = r.getheader("X-Transmission-Session-Id")
                continue
            return json.loads(data), len(data)
        raise RuntimeError("no session id")

    def wait_up(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            try:
                self.call("session-get")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("RPC did not come up")

    def statuses(self):
        v, _ = self.call("torrent-get", {"fields": ["id", "status", "percentDone"]})
        return v["arguments"]["torrents"]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def wait_seeding(rpc, n, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            t = rpc.statuses()
        except OSError:
            time.sleep(0.05)
            continue
        if len(t) == n and all(x["status"] == 6 for x in t):
            return True
        time.sleep(0.05)
    return False


class Actorrent:
    name = "actorrent"

    def __init__(self, work, dl, binary):
        self.work, self.dl, self.binary = work, dl, binary
        self.state = os.path.join(work, "actorrent-state")
        self.port = free_port()
        self.p = None
        self.logs = []

    def start(self):
        log = os.path.join(self.work, "actorrent-%d.log" % len(self.logs))
        self.logs.append(log)
        self.p = subprocess.Popen(
            [self.binary, "daemon", "--state-dir", self.state, "--download-dir", self.dl,
             "--rpc", "127.0.0.1:%d" % self.port, "--listen", "127.0.0.1:0", "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        return Rpc(self.port)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=300)

    def rechecked(self):
        with open(self.logs[-1]) as f:
            return sum(1 for line in f if "rechecking" in line)


class Transmission:
    name = "transmission-daemon"

    def __init__(self, work, dl):
        self.work, self.dl = work, dl
        self.conf = os.path.join(work, "transmission-conf")
        os.makedirs(self.conf, exist_ok=True)
        self.port = free_port()
        with open(os.path.join(self.conf, "settings.json"), "w") as f:
            json.dump({"dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
                       "utp-enabled": False, "port-forwarding-enabled": False,
                       "rpc-authentication-required": False, "rpc-whitelist-enabled": False,
                       "rpc-host-whitelist-enabled": False, "peer-port": free_port(),
                       "bind-address-ipv4": "127.0.0.1", "download-queue-enabled": False,
                       "seed-queue-enabled": False, "queue-stalled-enabled": False,
                       "message-level": 1, "rpc-port": self.port}, f)
        self.p = None

    def start(self):
        self.p = subprocess.Popen(
            ["transmission-daemon", "-f", "-g", self.conf, "-w", self.dl, "-p", str(self.port),
             "-T", "--no-portmap"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.work, "transmission.log"), "a"))
        return Rpc(self.port)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=300)

    def rechecked(self):
        return None


def measure(d, metas, gets):
    n = len(metas)
    r = {}
    rpc = d.start()
    rpc.wait_up()
    time.sleep(2)
    empty_rss = rss_kib(d.p.pid)
    t0 = time.time()
    for m in metas:
        v, _ = rpc.call("torrent-add", {"metainfo": base64.b64encode(m).decode()})
        assert v["result"] == "success", v
    added = time.time()
    r["add/s"] = n / (added - t0)
    if not wait_seeding(rpc, n, 600):
        raise RuntimeError("%s: not every torrent seeds" % d.name)
    r["first seed s"] = time.time() - t0
    time.sleep(5)
    rss = rss_kib(d.p.pid)
    r["RSS idle MiB"] = rss / 1024
    r["KiB/torrent"] = (rss - empty_rss) / n
    r["fds idle"] = fd_count(d.p.pid)
    c0, w0 = cpu_ticks(d.p.pid), time.time()
    time.sleep(10)
    hz = os.sysconf("SC_CLK_TCK")
    r["CPU idle %"] = 100.0 * (cpu_ticks(d.p.pid) - c0) / hz / (time.time() - w0)
    lat = []
    size = 0
    for _ in range(gets):
        s = time.perf_counter()
        v, size = rpc.call("torrent-get", {"fields": SONARR_FIELDS})
        lat.append((time.perf_counter() - s) * 1000)
        assert len(v["arguments"]["torrents"]) == n
    lat.sort()
    r["get ms median"] = statistics.median(lat)
    r["get ms p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    r["get KiB"] = size / 1024
    d.stop()
    t1 = time.time()
    rpc = d.start()
    if not wait_seeding(rpc, n, 600):
        raise RuntimeError("%s: not every torrent seeds after the restart" % d.name)
    r["restart s"] = time.time() - t1
    r["fds restart"] = fd_count(d.p.pid)
    r["rechecked"] = d.rechecked()
    d.stop()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torrents", type=int, default=1000)
    ap.add_argument("--gets", type=int, default=50)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "actorrent"))
    ap.add_argument("--no-transmission", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="daemon-bench-")
    try:
        dl = os.path.join(work, "dl")
        os.makedirs(dl)
        metas = make_torrents(a.torrents, dl, a.size, 16 * 1024)
        daemons = [Actorrent(work, dl, a.binary)]
        if not a.no_transmission and shutil.which("transmission-daemon"):
            daemons.append(Transmission(work, dl))
        results = [(d.name, measure(d, metas, a.gets)) for d in daemons]
        keys = list(results[0][1].keys())
        print("%d torrents of %d KiB, %d torrent-get calls" % (a.torrents, a.size // 1024, a.gets))
        print("%-16s" % "" + "".join("%22s" % name for name, _ in results))
        for k in keys:
            cells = []
            for _, r in results:
                v = r[k]
                cells.append("%22s" % ("-" if v is None else ("%.2f" % v if isinstance(v, float) else v)))
            print("%-16s" % k + "".join(cells))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
