#!/usr/bin/python3
"""A scripted seed that serves corrupt blocks: the lab's bad host.

  corrupt_peer.py --torrent F --payload FILE --tracker URL --report OUT
                  [--listen PORT] [--timeout S]

It announces itself to the tracker as a seed (and again every 5 s,
connecting out to every peer the tracker lists), claims every piece
(a full bitfield), unchokes everyone at once and answers every request
with the right block of FILE with its first byte inverted, so each piece
a leecher takes a block of from it fails its hash check.

On SIGTERM or the timeout it writes OUT: per remote address, the
connections it had (and when each handshake completed), blocks and bytes
it served, and when it served the first and the last block; that is the
evidence of who kept talking to it after banning it.
"""

import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torrentfile  # noqa: E402

PSTR = b"\x13BitTorrent protocol"
MAX_MSG = 1 << 20


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_ip = {}

    def add(self, ip, **kw):
        with self.lock:
            e = self.by_ip.setdefault(ip, {"connections": 0, "blocks": 0, "bytes": 0, "first_block": None, "last_block": None, "connected_at": []})
            for k, v in kw.items():
                if k == "connected_at":
                    if len(e[k]) < 1000:
                        e[k].append(v)
                elif k in ("first_block", "last_block"):
                    if k == "first_block" and e[k] is None:
                        e[k] = v
                    if k == "last_block":
                        e[k] = v
                else:
                    e[k] += v


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def serve(conn, addr, t, fd, tally, peer_id, outgoing):
    """One connection; `outgoing` is the set of dialled addresses, from
    which this one is removed when it ends (so it may be dialled again)."""
    ip = addr[0]
    try:
        conn.settimeout(120)
        conn.sendall(PSTR + b"\0" * 8 + bytes.fromhex(t.info_hash) + peer_id)
        hs = recv_exact(conn, 68)
        if hs[:20] != PSTR or hs[28:48] != bytes.fromhex(t.info_hash):
            return
        tally.add(ip, connections=1, connected_at=round(time.time(), 3))
        nbytes = (len(t.hashes) + 7) // 8
        bits = bytearray(b"\xff" * nbytes)
        spare = nbytes * 8 - len(t.hashes)
        if spare:
            bits[-1] = (0xFF << spare) & 0xFF
        conn.sendall(struct.pack(">IB", 1 + nbytes, 5) + bits + struct.pack(">IB", 1, 1))
        while True:
            (length,) = struct.unpack(">I", recv_exact(conn, 4))
            if length == 0:
                continue
            if length > MAX_MSG:
                return
            msg = recv_exact(conn, length)
            if msg[0] == 6 and length == 13:
                index, begin, n = struct.unpack(">III", msg[1:])
                if index >= len(t.hashes) or n > 1 << 17 or begin + n > t.piece_size(index):
                    return
                data = bytearray(os.pread(fd, n, index * t.piece_length + begin))
                data[0] ^= 0xFF
                conn.sendall(struct.pack(">IBII", 9 + n, 7, index, begin) + data)
                now = time.time()
                tally.add(ip, blocks=1, bytes=n, first_block=now, last_block=now)
    except (OSError, ConnectionError, struct.error):
        pass
    finally:
        conn.close()
        with outgoing_lock:
            outgoing.discard(addr)


outgoing_lock = threading.Lock()


def announce(url, t, peer_id, port, event):
    q = urllib.parse.urlencode(
        {"peer_id": peer_id, "port": port, "uploaded": 0, "downloaded": 0, "left": 0, "compact": 1, "numwant": 200, **({"event": event} if event else {})}
    )
    full = f"{url}?info_hash={urllib.parse.quote_from_bytes(bytes.fromhex(t.info_hash))}&{q}"
    body = urllib.request.urlopen(full, timeout=5).read()
    d, _ = torrentfile.bdecode(body)
    peers = d.get(b"peers", b"")
    return [(socket.inet_ntoa(peers[i : i + 4]), struct.unpack(">H", peers[i + 4 : i + 6])[0]) for i in range(0, len(peers) - 5, 6)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torrent", required=True)
    p.add_argument("--payload", required=True)
    p.add_argument("--tracker", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--listen", type=int, default=6881)
    p.add_argument("--own-ip", default="")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    t = torrentfile.Torrent(a.torrent)
    fd = os.open(a.payload, os.O_RDONLY)
    peer_id = b"-XC0001-" + bytes(random.choice(b"0123456789") for _ in range(12))
    tally = Tally()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.listen))
    srv.listen(128)
    srv.settimeout(0.2)
    outgoing = set()
    deadline = time.monotonic() + a.timeout
    next_announce = 0.0
    event = "started"
    while not stop.is_set() and time.monotonic() < deadline:
        if time.monotonic() >= next_announce:
            next_announce = time.monotonic() + 5
            try:
                for peer in announce(a.tracker, t, peer_id, a.listen, event):
                    if peer[0] == a.own_ip:
                        continue
                    with outgoing_lock:
                        if peer in outgoing:
                            continue
                        outgoing.add(peer)
                    try:
                        c = socket.create_connection(peer, timeout=3)
                    except OSError:
                        with outgoing_lock:
                            outgoing.discard(peer)
                        continue
                    threading.Thread(target=serve, args=(c, peer, t, fd, tally, peer_id, outgoing), daemon=True).start()
                event = None
            except OSError as e:
                print("corrupt_peer: announce:", e, file=sys.stderr, flush=True)
        try:
            conn, addr = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn, addr, t, fd, tally, peer_id, set()), daemon=True).start()
    with tally.lock:
        json.dump(tally.by_ip, open(a.report, "w"), indent=1)


if __name__ == "__main__":
    main()
