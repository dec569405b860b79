#!/usr/bin/python3
"""libtorrent as the other side of actorrent's tests, benchmarks and lab.

The one libtorrent helper: the interop tests, bench/download, bench/seed,
bench/stream, bench/profile and the swarm lab (bench/lab) all run it.
Run with /usr/bin/python3 (the distribution's python3-libtorrent); the
`python3` on PATH may be a pyenv build without it.

  make  --data PATH --piece-size N --out FILE
        Create a v1-only torrent of PATH (a file or a directory) with
        lt.create_torrent (libtorrent 2.x makes hybrid v1+v2 torrents by
        default; actorrent speaks BEP 3). Prints `MADE <info-hash> <pieces>
        <total size>`.

  seed  --torrent F --save-path DIR [--timeout S] [--seed-mode]
        Recheck DIR/<name> (--seed-mode: trust it and verify pieces as they
        are served), then seed it on --listen (default 127.0.0.1 and a port
        the system picks). Prints `PORT <n>` once seeding; runs until stdin
        closes (when it is a pipe), SIGTERM, or the timeout; then prints
        `UPLOADED <payload bytes>`.

  leech --torrent F --save-path DIR [--peer IP:PORT]... [--timeout S]
        Download F into DIR from the given peers and/or the torrent's
        trackers (or from peers that dial it: it prints `PORT <n>` first).
        Prints `DONE <bytes> <seconds>` (seconds from adding the
        torrent to the last piece verified) and exits 0; exits 1 on error
        or timeout. With --stay it keeps seeding after that until stdin
        closes. With --magnet URI instead of --torrent it starts from the
        link and fetches the metadata from its peers first (BEP 9), printing
        `METADATA` once it has it; the torrent is then written to
        --save-torrent if given. --no-pex leaves out libtorrent's default
        plugins, so the leecher never learns other peers through the seed (a benchmark
        measures what the seed alone sends). The DONE line also carries the
        wall-clock start and end (Unix seconds). --fsync syncs every file
        before DONE: libtorrent 2.x writes through mmap, so "finished" means
        the page cache, and actorrent's download exits only after fsync.

Both seed and leech take `--listen IP:PORT` (the lab: 0.0.0.0:6881),
`--dht HOST:PORT` (libtorrent's DHT on, bootstrapped from that node only,
one-node-per-address rules off for loopback; see dht_settings) and
`--stats FILE`, which gets one JSON object per line like actorrent's
--stats-json: every 0.5 s and on a state change, with `t` (Unix seconds),
`event` (`progress`, `complete` once a leecher has every piece, `stopped`
last), `state`, `pieces_done`, `pieces_total`, `bytes_down`, `bytes_up`
(payload bytes), `peers`, `hash_failures`.

Settings (`settings(tuned)`): both modes turn off every way to find or reach
peers other than the named ones and the tracker (DHT, LSD, UPnP, NAT-PMP).
`--profile tuned` (the default) also makes libtorrent fast on loopback:

  * uTP off. libtorrent tries uTP first for outgoing connections; its
    LEDBAT congestion control and 1.4 KB packets over loopback cap a
    transfer at a few tens of MB/s. This is most of why a default
    libtorrent leecher took 140 s for 1 GiB here.
  * high_performance_seed() as the base: larger send buffer watermarks
    (a peer is refilled before its socket buffer drains), deeper request
    queues (max_out_request_queue 1500), more disk bytes in flight
    (max_queued_disk_bytes), more connections.
  * ignore_limits_on_local_network stays true and no rate limit is set, so
    nothing throttles 127.0.0.1.
  * allow_multiple_connections_per_ip: every peer here is 127.0.0.1.

`--encryption forced|enabled|disabled` sets libtorrent's out_enc_policy and
in_enc_policy (MSE/PE: forced refuses plaintext peers both ways) and
`--enc-level plaintext|rc4|both` its allowed_enc_level; left out, libtorrent's
defaults (enabled, both) apply.

`--profile default` keeps libtorrent's defaults except the discovery
switches, to measure what the tuning changes; `default-tcp` is that with uTP
off, `tuned-utp` is `tuned` with uTP on (to tell the two changes apart).
"""

import argparse
import json
import os
import signal
import stat
import sys
import threading
import time

import libtorrent as lt


def log(*args):
    print("[lt]", *args, file=sys.stderr, flush=True)


PROFILES = ("tuned", "default", "default-tcp", "tuned-utp")


def settings(profile, listen="127.0.0.1:0"):
    hps = profile in ("tuned", "tuned-utp")
    s = lt.high_performance_seed() if hps else lt.default_settings()
    s.update(
        {
            "listen_interfaces": listen,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "allow_multiple_connections_per_ip": True,
            "alert_mask": lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.peer_notification
            | lt.alert.category_t.tracker_notification,
        }
    )
    if profile in ("tuned", "default-tcp"):
        s.update({"enable_incoming_utp": False, "enable_outgoing_utp": False})
    if hps:
        s.update(
            {
                "ignore_limits_on_local_network": True,
                "upload_rate_limit": 0,
                "download_rate_limit": 0,
                # Announce to every tracker at once; the tests use one.
                "announce_to_all_trackers": True,
                "announce_to_all_tiers": True,
            }
        )
    return s


def encryption_settings(a):
    s = {}
    if a.encryption is not None:
        policy = getattr(lt.enc_policy, a.encryption)
        s["out_enc_policy"] = policy
        s["in_enc_policy"] = policy
    if a.enc_level is not None:
        s["allowed_enc_level"] = getattr(lt.enc_level, a.enc_level)
    return s


def dht_settings(bootstrap):
    """--dht HOST:PORT: libtorrent's DHT on, bootstrapped from that node
    only. Every node of a test shares 127.0.0.1, so the one-node-per-address
    rules (dht_restrict_routing_ips, dht_restrict_search_ips) and the
    per-address rate limit (dht_block_ratelimit, 5 packets a second) are
    lifted, as actors/tests/dht_support/lt_dht.py does."""
    if not bootstrap:
        return {}
    return {
        "enable_dht": True,
        "dht_bootstrap_nodes": bootstrap,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_block_ratelimit": 1000000,
        "dht_upload_rate_limit": 10000000,
        # Magnet torrents announce at once; 15 s between re-announces
        # instead of 15 min so a lookup that ran before the swarm knew the
        # seed is retried within the test.
        "dht_announce_interval": 15,
    }


def start_session(a, pex=True):
    s = settings(a.profile, a.listen)
    s.update(encryption_settings(a))
    s.update(dht_settings(getattr(a, "dht", None)))
    limit = getattr(a, "upload_limit", 0)
    if limit:
        s.update({"upload_rate_limit": limit, "ignore_limits_on_local_network": False})
    # Without the default plugins there is no ut_pex: a benchmark leecher
    # then talks to the seed it was given and never learns of the others.
    ses = lt.session(s, 1 if pex else 0)
    deadline = time.monotonic() + 10
    while ses.listen_port() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("libtorrent did not open a listen socket")
        ses.wait_for_alert(100)
        drain(ses, False)
    return ses


def drain(ses, verbose, stats=None):
    for a in ses.pop_alerts():
        if stats is not None and isinstance(a, lt.hash_failed_alert):
            stats.hash_failures += 1
        if verbose or isinstance(
            a, (lt.torrent_error_alert, lt.file_error_alert, lt.hash_failed_alert)
        ):
            log(type(a).__name__, a.message())


def stop_event():
    """Set when stdin (a pipe) reaches EOF, or SIGTERM or SIGINT arrives:
    how a driver stops us. A stdin that is not a pipe (the lab gives
    /dev/null) is not watched, or it would stop us at once."""
    ev = threading.Event()

    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            ev.set()

    mode = os.fstat(0).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: ev.set())
    signal.signal(signal.SIGINT, lambda *_: ev.set())
    return ev


class Stats:
    """--stats FILE: JSON lines in the shape of actorrent's --stats-json."""

    def __init__(self, path, total):
        self.out = open(path, "a", buffering=1) if path else None
        self.total = total
        self.hash_failures = 0
        self.last = 0.0

    def emit(self, event, st):
        if self.out is None:
            return
        self.last = time.monotonic()
        line = {
            "t": round(time.time(), 3),
            "event": event,
            "state": "seeding" if st.is_seeding else str(st.state),
            "pieces_done": st.num_pieces,
            "pieces_total": self.total,
            "bytes_down": st.total_payload_download,
            "bytes_up": st.total_payload_upload,
            "peers": st.num_peers,
            "hash_failures": self.hash_failures,
        }
        self.out.write(json.dumps(line) + "\n")

    def tick(self, st):
        if self.out is not None and time.monotonic() - self.last >= 0.5:
            self.emit("progress", st)


def cmd_make(a):
    data = os.path.abspath(a.data)
    fs = lt.file_storage()
    lt.add_files(fs, data)
    if fs.num_files() == 0:
        raise SystemExit(f"no files under {data}")
    t = lt.create_torrent(fs, a.piece_size, flags=lt.create_torrent.v1_only)
    t.set_creator("actorrent tests (libtorrent %s)" % lt.__version__)
    lt.set_piece_hashes(t, os.path.dirname(data))
    with open(a.out, "wb") as f:
        f.write(lt.bencode(t.generate()))
    ti = lt.torrent_info(a.out)
    print(f"MADE {ti.info_hash()} {ti.num_pieces()} {ti.total_size()}", flush=True)


def fsync_files(ti, save_path):
    fs = ti.files()
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        fd = os.open(os.path.join(save_path, fs.file_path(i)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def add(ses, a):
    if getattr(a, "magnet", None):
        atp = lt.parse_magnet_uri(a.magnet)
        atp.save_path = os.path.abspath(a.save_path)
        return ses.add_torrent(atp), None
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = os.path.abspath(a.save_path)
    if getattr(a, "seed_mode", False):
        atp.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(atp), atp.ti


def peer_addr(text):
    host, _, port = text.rpartition(":")
    # "[::1]:6881" -> ("::1", 6881)
    return host.strip("[]"), int(port)


def cmd_seed(a):
    stop = stop_event()
    ses = start_session(a)
    h, ti = add(ses, a)
    stats = Stats(a.stats, ti.num_pieces())
    deadline = time.monotonic() + a.timeout
    while True:
        st = h.status()
        if st.errc.value() != 0:
            raise SystemExit(f"torrent error: {st.errc.message()}")
        if st.is_seeding:
            break
        if st.state not in (
            lt.torrent_status.checking_files,
            lt.torrent_status.checking_resume_data,
        ):
            stats.emit("progress", st)
            raise SystemExit(
                f"payload does not match the torrent ({st.num_pieces} of "
                f"{ti.num_pieces()} pieces)"
            )
        if time.monotonic() > deadline:
            raise SystemExit("timed out checking the payload")
        ses.wait_for_alert(100)
        drain(ses, a.verbose, stats)
    stats.emit("progress", h.status())
    print(f"PORT {ses.listen_port()}", flush=True)
    for p in a.peer:
        h.connect_peer(peer_addr(p))
    while not stop.wait(0.2):
        drain(ses, a.verbose, stats)
        stats.tick(h.status())
        if time.monotonic() > deadline:
            log("seed timeout expired")
            break
    stats.emit("stopped", h.status())
    print(f"UPLOADED {h.status().total_payload_upload}", flush=True)


def cmd_leech(a):
    stop = stop_event() if a.stay else None
    ses = start_session(a, pex=not a.no_pex)
    # Its port, for a seed that is to dial this leecher instead.
    print(f"PORT {ses.listen_port()}", flush=True)
    t0 = time.monotonic()
    wall0 = time.time()
    h, ti = add(ses, a)
    stats = Stats(a.stats, ti.num_pieces() if ti is not None else 0)
    for p in a.peer:
        h.connect_peer(peer_addr(p))
    deadline = t0 + a.timeout
    last = 0.0
    while True:
        st = h.status()
        if st.errc.value() != 0:
            log(f"torrent error: {st.errc.message()}")
            return 1
        if ti is None and st.has_metadata:
            ti = h.torrent_file()
            stats.total = ti.num_pieces()
            print("METADATA", flush=True)
        if st.is_seeding:
            break
        now = time.monotonic()
        pieces = ti.num_pieces() if ti is not None else "?"
        if now > deadline:
            log(f"timed out with {st.num_pieces} of {pieces} pieces, {st.num_peers} peers")
            return 1
        if a.verbose and now - last > 1:
            last = now
            log(f"{st.num_pieces}/{pieces} pieces {st.download_rate} B/s {st.num_peers} peers")
        if st.num_peers == 0 and a.peer:
            for p in a.peer:
                h.connect_peer(peer_addr(p))
        ses.wait_for_alert(20)
        drain(ses, a.verbose, stats)
        stats.tick(st)
    if a.fsync:
        fsync_files(ti, os.path.abspath(a.save_path))
    stats.emit("complete", h.status())
    secs = time.monotonic() - t0
    if ti is None:
        ti = h.torrent_file()
    if a.save_torrent:
        with open(a.save_torrent, "wb") as f:
            f.write(lt.bencode(lt.create_torrent(ti).generate()))
    # Wall-clock start and end too, so a driver running several leechers
    # can take the span from the first start to the last finish.
    print(f"DONE {ti.total_size()} {secs:.3f} {wall0:.3f} {time.time():.3f}", flush=True)
    if stop is not None:
        while not stop.wait(0.2):
            drain(ses, a.verbose, stats)
            stats.tick(h.status())
            if time.monotonic() > deadline:
                log("timeout expired while seeding on")
                break
        print(f"UPLOADED {h.status().total_payload_upload}", flush=True)
    stats.emit("stopped", h.status())
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="create a v1-only torrent")
    m.add_argument("--data", required=True, help="file or directory to share")
    m.add_argument("--piece-size", type=int, required=True)
    m.add_argument("--out", required=True, help="where to write the .torrent")
    for name in ("seed", "leech"):
        c = sub.add_parser(name)
        c.add_argument("--torrent", required=name == "seed")
        c.add_argument("--save-path", required=True)
        c.add_argument("--peer", action="append", default=[], help="IP:PORT")
        c.add_argument("--timeout", type=float, default=600)
        c.add_argument("--profile", choices=PROFILES, default="tuned")
        c.add_argument("--verbose", action="store_true")
        c.add_argument("--encryption", choices=("forced", "enabled", "disabled"))
        c.add_argument("--enc-level", choices=("plaintext", "rc4", "both"))
        c.add_argument("--listen", default="127.0.0.1:0", help="IP:PORT (port 0: any)")
        c.add_argument("--stats", help="FILE: JSON lines of progress")
        c.add_argument("--dht", help="HOST:PORT: DHT on, bootstrapped from this node only")
        if name == "seed":
            c.add_argument(
                "--upload-limit",
                type=int,
                default=0,
                help="bytes per second, also on loopback (0: none)",
            )
        if name == "seed":
            c.add_argument("--seed-mode", action="store_true", help="skip the recheck")
        if name == "leech":
            c.add_argument("--fsync", action="store_true", help="fsync every file before DONE")
            c.add_argument("--stay", action="store_true", help="seed on until stdin closes or SIGTERM")
            c.add_argument("--no-pex", action="store_true", help="no ut_pex (peers stay apart)")
            c.add_argument("--magnet", help="start from this magnet link instead of --torrent")
            c.add_argument("--save-torrent", help="write the torrent here once known")
    a = p.parse_args()
    if a.cmd == "make":
        cmd_make(a)
    elif a.cmd == "seed":
        cmd_seed(a)
    else:
        sys.exit(cmd_leech(a))


if __name__ == "__main__":
    main()
