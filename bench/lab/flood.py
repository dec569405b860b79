#!/usr/bin/python3
"""Many scripted peers from one process: the lab's connection flood.

  flood.py --target IP:PORT --info-hash HEX --pieces N --peers 1000
           --report OUT [--duration S]

Opens --peers TCP connections to the target at once (one asyncio task
each, not one process each). Every peer sends a handshake for the
torrent, an empty bitfield and INTERESTED; once unchoked it requests 16
blocks of piece 0.. and then stops reading, so whatever the target queues
for it stays queued (the worst case for the target's memory). It never
reconnects. After --duration (or SIGTERM) it writes OUT: how many
connected, got a handshake back, were unchoked, received how many bytes,
and were closed by the target (and after how long), plus the most peers
that had a handshake answered at one time.
"""

import argparse
import asyncio
import json
import resource
import signal
import struct
import time

PSTR = b"\x13BitTorrent protocol"


class Stats:
    def __init__(self):
        self.connected = 0
        self.connect_failed = 0
        self.handshaked = 0
        self.unchoked = 0
        self.bytes = 0
        self.closed_by_target = 0
        self.closed_after = []
        self.live = 0
        self.live_max = 0


async def peer(i, a, st, stop):
    host, port = a.target.rsplit(":", 1)
    t0 = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 20)
    except (OSError, asyncio.TimeoutError):
        st.connect_failed += 1
        return
    st.connected += 1
    handshaked = False
    try:
        pid = b"-FL0001-" + f"{i:012d}".encode()
        w.write(PSTR + b"\0" * 8 + bytes.fromhex(a.info_hash) + pid)
        await w.drain()
        hs = await asyncio.wait_for(r.readexactly(68), 30)
        if hs[28:48] != bytes.fromhex(a.info_hash):
            return
        handshaked = True
        st.handshaked += 1
        st.live += 1
        st.live_max = max(st.live_max, st.live)
        nbytes = (a.pieces + 7) // 8
        w.write(struct.pack(">IB", 1 + nbytes, 5) + b"\0" * nbytes + struct.pack(">IB", 1, 2))
        await w.drain()
        while not stop.is_set():
            head = await r.readexactly(4)
            (length,) = struct.unpack(">I", head)
            if length == 0:
                continue
            if length > (1 << 20):
                return
            msg = await r.readexactly(length)
            st.bytes += 4 + length
            if msg[0] == 1:
                st.unchoked += 1
                piece = i % a.pieces
                reqs = b"".join(struct.pack(">IBIII", 13, 6, piece, k * 16384, 16384) for k in range(16))
                w.write(reqs)
                await w.drain()
                # Stall: read nothing more; keep the socket open.
                await stop.wait()
                return
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        if not stop.is_set():
            st.closed_by_target += 1
            st.closed_after.append(round(time.monotonic() - t0, 2))
    finally:
        if handshaked:
            st.live -= 1
        w.close()


async def run(a):
    st = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    tasks = [asyncio.create_task(peer(i, a, st, stop)) for i in range(a.peers)]
    try:
        await asyncio.wait_for(stop.wait(), a.duration)
    except asyncio.TimeoutError:
        stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    closed = sorted(st.closed_after)
    return {
        "peers": a.peers,
        "connected": st.connected,
        "connect_failed": st.connect_failed,
        "handshaked": st.handshaked,
        "handshaked_at_once_max": st.live_max,
        "unchoked": st.unchoked,
        "bytes_received": st.bytes,
        "closed_by_target": st.closed_by_target,
        "closed_after_s_median": closed[len(closed) // 2] if closed else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--info-hash", required=True)
    p.add_argument("--pieces", type=int, required=True)
    p.add_argument("--peers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--report", required=True)
    a = p.parse_args()
    want = a.peers + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    report = asyncio.run(run(a))
    json.dump(report, open(a.report, "w"), indent=1)


if __name__ == "__main__":
    main()
