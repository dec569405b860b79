#!/usr/bin/python3
"""Request/response timeline of a seed's connections from a loopback capture.

    tcpdump -i lo -s 96 -w seed.pcap 'tcp port PORT'      (bench/profile/run.py seed --pcap)
    bench/profile/pcap_timeline.py seed.pcap --seed-port PORT [--gap-ms 0.5]

Reads the capture with no dependency (pcap, Ethernet/IPv4/TCP as Linux
captures loopback) and, per connection of the seed, follows two byte
counts over time: R(t), block bytes the leecher has requested (each 17-byte
message leecher -> seed counted as a request of one 16 KiB block, plus its
13-byte piece header), and S(t), bytes the seed has sent. From them:

  span            first to last seed data segment
  rate            S / span
  idle time       the sum of gaps longer than --gap-ms between seed data
                  segments, split by what was owed when the gap began:
                  "owed" = requested bytes not yet sent (the seed had work and
                  sent nothing: its own latency), "nothing owed" (the
                  leecher had not asked for more: the leecher's side), and
                  "window full" (sent - acked >= the leecher's advertised
                  window: TCP flow control)
  queue delay     mean of R(t) - S(t) over time / rate (Little's law): how
                  long a request waits at the seed, on average, before its
                  block is on the wire

The counting is approximate at the edges (handshake, bitfield and
extension messages are a few hundred bytes; HAVEs and keep-alives are
counted as requests), which does not matter over hundreds of MiB.
"""

import argparse
import struct
import sys

REQ = 17  # length prefix + id + index, begin, length
BLOCK = 16384 + 13


def packets(path):
    with open(path, "rb") as f:
        head = f.read(24)
        magic = struct.unpack("<I", head[:4])[0]
        if magic == 0xA1B2C3D4:
            endian, scale = "<", 1e-6
        elif magic == 0xA1B23C4D:
            endian, scale = "<", 1e-9
        else:
            raise SystemExit(f"{path}: not a little-endian pcap file")
        link = struct.unpack(endian + "I", head[20:24])[0]
        l2 = {1: 14, 113: 16, 0: 4}.get(link)
        if l2 is None:
            raise SystemExit(f"link type {link} not handled")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, caplen, _ = struct.unpack(endian + "IIII", h)
            data = f.read(caplen)
            ip = data[l2:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            if len(tcp) < 20:
                continue
            sport, dport, seq, ack = struct.unpack(">HHII", tcp[:12])
            off = (tcp[12] >> 4) * 4
            flags = tcp[13]
            win = struct.unpack(">H", tcp[14:16])[0]
            wscale = None
            if flags & 0x02:  # SYN: read the window scale option
                opts = tcp[20:off]
                i = 0
                while i < len(opts):
                    kind = opts[i]
                    if kind == 0:
                        break
                    if kind == 1:
                        i += 1
                        continue
                    ln = opts[i + 1] if i + 1 < len(opts) else 0
                    if kind == 3 and ln == 3:
                        wscale = opts[i + 2]
                    i += max(ln, 2)
            yield sec + frac * scale, sport, dport, seq, ack, total - ihl - off, flags, win, wscale


def analyse(path, seed_port, gap_s):
    conns = {}
    for t, sp, dp, seq, ack, plen, flags, win, wscale in packets(path):
        if sp == seed_port:
            c = conns.setdefault(dp, {"sent": [], "req": [], "acks": [], "ws": {}})
            if flags & 0x02 and wscale is not None:
                c["ws"]["seed"] = wscale
            if plen > 0:
                c.setdefault("seq0", seq)
                c["sent"].append((t, (seq - c["seq0"]) % (1 << 32) + plen))
        elif dp == seed_port:
            c = conns.setdefault(sp, {"sent": [], "req": [], "acks": [], "ws": {}})
            if flags & 0x02 and wscale is not None:
                c["ws"]["leecher"] = wscale
            if plen > 0:
                c["req"].append((t, plen))
            if flags & 0x10 and "seq0" in c:
                w = win << c["ws"].get("leecher", 0)
                c["acks"].append((t, (ack - c["seq0"]) % (1 << 32), w))
    out = {}
    for port, c in conns.items():
        sent = c["sent"]
        if len(sent) < 10:
            continue
        # Cumulative requested bytes at each request packet.
        req, r = [], 0
        for t, n in c["req"]:
            r += n // REQ * BLOCK
            req.append((t, r))
        t0, t1 = sent[0][0], sent[-1][0]
        total = sent[-1][1]
        # Walk both series and the acks in time order.
        ri = ai = 0
        requested = acked = 0
        window = 1 << 16
        idle = {"owed": 0.0, "nothing owed": 0.0, "window full": 0.0}
        gaps = {"owed": 0, "nothing owed": 0, "window full": 0}
        area = 0.0
        prev_t, prev_s = t0, sent[0][1]
        for t, s in sent[1:]:
            while ri < len(req) and req[ri][0] <= prev_t:
                requested = req[ri][1]
                ri += 1
            while ai < len(c["acks"]) and c["acks"][ai][0] <= prev_t:
                acked, window = c["acks"][ai][1], c["acks"][ai][2]
                ai += 1
            owed = requested - prev_s
            area += max(owed, 0) * (t - prev_t)
            dt = t - prev_t
            if dt > gap_s:
                if prev_s - acked >= window - 65536:
                    k = "window full"
                elif owed > 0:
                    k = "owed"
                else:
                    k = "nothing owed"
                idle[k] += dt
                gaps[k] += 1
            prev_t, prev_s = t, s
        span = t1 - t0
        rate = total / span if span > 0 else 0
        out[port] = {
            "span_s": span,
            "bytes": total,
            "rate_mb_s": rate / 1e6,
            "idle_s": idle,
            "gaps": gaps,
            "idle_share": {k: v / span for k, v in idle.items()} if span else {},
            "mean_owed_kib": area / span / 1024 if span else 0,
            "queue_delay_ms": (area / span) / rate * 1000 if rate else 0,
            "requests": req[-1][1] // BLOCK if req else 0,
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pcap")
    ap.add_argument("--seed-port", type=int, required=True)
    ap.add_argument("--gap-ms", type=float, default=0.5, help="a pause longer than this counts as idle")
    a = ap.parse_args()
    res = analyse(a.pcap, a.seed_port, a.gap_ms / 1000)
    for port, r in res.items():
        idle = ", ".join(f"{k} {v * 1000:.0f} ms ({100 * r['idle_share'][k]:.0f} %, {r['gaps'][k]} gaps)"
                         for k, v in r["idle_s"].items())
        print(f"leecher port {port}: {r['bytes'] / 1e6:.0f} MB in {r['span_s']:.3f} s = {r['rate_mb_s']:.0f} MB/s; "
              f"idle > {a.gap_ms} ms: {idle}; mean owed {r['mean_owed_kib']:.0f} KiB, "
              f"queue delay {r['queue_delay_ms']:.2f} ms; {r['requests']} requests")
    if not res:
        sys.exit("no seed connection with data in the capture")


if __name__ == "__main__":
    main()
