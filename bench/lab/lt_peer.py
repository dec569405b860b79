#!/usr/bin/python3
"""libtorrent on one lab host: the same role actorrent plays there.

  lt_peer.py seed  --torrent F --save-path DIR --stats FILE [--timeout S]
  lt_peer.py leech --torrent F --save-path DIR --stats FILE [--timeout S]

Listens on 0.0.0.0:6881 and finds its peers through the torrent's tracker
only. A seed checks its data first (exit 1 if incomplete); a leecher
downloads and then keeps seeding, as `actorrent download --seed-after`
does. Both run until SIGTERM or the timeout.

FILE gets one JSON object per line, like actorrent's --stats-json: every
0.5 s and on a state change, with `t` (Unix seconds), `event` (`progress`,
`complete` once every piece is verified, `stopped` last), `state`,
`pieces_done`, `pieces_total`, `bytes_down`, `bytes_up` (payload bytes),
`peers`, `hash_failures`.

Settings: libtorrent's defaults (choker: 8 unchoke slots, round-robin
seed choking; 200 connections), except that DHT, LSD, UPnP and NAT-PMP are
off (the tracker is the only source of peers, as for actorrent) and uTP is
off (actorrent speaks TCP only, so both are measured on TCP).
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

import libtorrent as lt


def settings():
    s = lt.default_settings()
    s.update(
        {
            "listen_interfaces": "0.0.0.0:6881",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
        }
    )
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("seed", "leech"))
    p.add_argument("--torrent", required=True)
    p.add_argument("--save-path", required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    out = open(a.stats, "a", buffering=1)
    ses = lt.session(settings())
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = os.path.abspath(a.save_path)
    h = ses.add_torrent(atp)
    total = atp.ti.num_pieces()
    deadline = time.monotonic() + a.timeout
    hash_failures = 0
    complete = False
    last = 0.0

    def emit(event, st):
        out.write(
            json.dumps(
                {
                    "t": round(time.time(), 3),
                    "event": event,
                    "state": str(st.state),
                    "pieces_done": st.num_pieces,
                    "pieces_total": total,
                    "bytes_down": st.total_payload_download,
                    "bytes_up": st.total_payload_upload,
                    "peers": st.num_peers,
                    "hash_failures": hash_failures,
                }
            )
            + "\n"
        )

    code = 0
    while not stop.is_set():
        if time.monotonic() > deadline:
            print("lt_peer: timeout", file=sys.stderr, flush=True)
            code = 1
            break
        ses.wait_for_alert(100)
        for al in ses.pop_alerts():
            if isinstance(al, lt.hash_failed_alert):
                hash_failures += 1
            elif isinstance(al, (lt.torrent_error_alert, lt.file_error_alert)):
                print("lt_peer:", al.message(), file=sys.stderr, flush=True)
        st = h.status()
        checking = st.state in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data)
        if a.mode == "seed" and not checking and not st.is_seeding:
            print(f"lt_peer: data incomplete ({st.num_pieces} of {total} pieces)", file=sys.stderr, flush=True)
            emit("progress", st)
            code = 1
            break
        now = time.monotonic()
        if st.is_seeding and not complete:
            complete = True
            emit("complete" if a.mode == "leech" else "progress", st)
            last = now
        elif now - last >= 0.5:
            emit("progress", st)
            last = now
    emit("stopped", h.status())
    out.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
