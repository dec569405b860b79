#!/usr/bin/python3
"""A libtorrent DHT node on 127.0.0.1, driven line by line by the DHT
interop test (run with /usr/bin/python3 and its python3-libtorrent).

  lt_dht.py --bootstrap 127.0.0.1:PORT --save-path DIR [--timeout S]

Prints `PORT <udp port>` and `ID <hex node id>` once the node runs. Then
reads commands on stdin:

  add <hex info-hash>              adds a torrent known by its info-hash only
                                   (a magnet link); libtorrent announces it
                                   in the DHT on its listen port (get_peers,
                                   then announce_peer with the tokens).
                                   The bindings cannot pass dht_announce's
                                   flags, so this is how it announces.
  get <hex info-hash>              dht_get_peers; prints
                                   `PEERS <hex> <ip:port> ...` when it ends
  nodes                            prints `NODES <n>`: nodes in the routing
                                   table (from a dht_stats_alert)

and prints `ANNOUNCED <hex> <ip> <port>` whenever another node announces a
peer to it (an announce_peer it accepted, token and all). Exits when stdin
closes, on SIGTERM, or after the timeout.

Settings: DHT on, everything else that finds peers off; several nodes on
one address allowed (dht_restrict_routing_ips / dht_restrict_search_ips
off, as issue 11 says), and libtorrent's per-address DHT rate limit
(dht_block_ratelimit, 5 packets a second) and DHT upload limit lifted,
since every node of the test shares 127.0.0.1.
"""

import argparse
import os
import queue
import signal
import sys
import threading
import time

import libtorrent as lt


def log(*args):
    print("[lt-dht]", *args, file=sys.stderr, flush=True)


def out(*args):
    print(*args, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--save-path", required=True)
    a = p.parse_args()

    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": True,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": a.bootstrap,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_block_ratelimit": 1000000,
        "dht_upload_rate_limit": 10000000,
        "alert_mask": lt.alert.category_t.dht_notification
        | lt.alert.category_t.dht_operation_notification
        | lt.alert.category_t.stats_notification
        | lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | (lt.alert.category_t.dht_log_notification if os.environ.get("LT_DHT_LOG") else 0),
    }
    ses = lt.session(settings)
    deadline = time.monotonic() + 10
    while ses.listen_port() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("libtorrent did not open a listen socket")
        ses.wait_for_alert(100)
        ses.pop_alerts()
    out("PORT", ses.listen_port())
    # The node id (the deprecated state API is the one the bindings give):
    # each entry is the 20-byte id followed by the interface address.
    nids = ses.save_state().get(b"dht state", {}).get(b"node-id", [])
    if nids:
        out("ID", nids[0][:20].hex())

    commands = queue.Queue()
    stop = threading.Event()

    def read_stdin():
        for line in sys.stdin:
            commands.put(line.split())
        stop.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    end = time.monotonic() + a.timeout
    while not stop.is_set() and time.monotonic() < end:
        while True:
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                break
            if not cmd:
                continue
            if cmd[0] == "add":
                atp = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + cmd[1])
                atp.save_path = a.save_path
                ses.add_torrent(atp)
            elif cmd[0] == "get":
                ses.dht_get_peers(lt.sha1_hash(bytes.fromhex(cmd[1])))
            elif cmd[0] == "nodes":
                ses.post_dht_stats()
            else:
                log("unknown command", cmd)
        ses.wait_for_alert(50)
        for al in ses.pop_alerts():
            if isinstance(al, lt.dht_get_peers_reply_alert):
                peers = " ".join("%s:%d" % (ip, port) for ip, port in al.peers())
                out("PEERS", str(al.info_hash), peers)
            elif isinstance(al, lt.dht_announce_alert):
                out("ANNOUNCED", str(al.info_hash), al.ip, al.port)
            elif isinstance(al, lt.dht_stats_alert):
                n = sum(b["num_nodes"] for b in al.routing_table)
                out("NODES", n)
            elif isinstance(al, lt.dht_bootstrap_alert):
                log("bootstrap done")
            elif isinstance(al, (lt.dht_log_alert, lt.dht_pkt_alert)):
                log(al.message())
            elif al.category() & lt.alert.category_t.error_notification:
                log(type(al).__name__, al.message())


if __name__ == "__main__":
    main()
