#!/usr/bin/python3
"""libtorrent as the other side of actorrent's seeding tests and benchmark.

Run with /usr/bin/python3 (the distribution's python3-libtorrent); the
`python3` on PATH may be a pyenv build without it.

  seed  --torrent F --save-path DIR [--timeout S]
        Recheck DIR/<name>, then seed it on 127.0.0.1 (a port the system
        picks). Prints `PORT <n>` once seeding; runs until stdin closes,
        SIGTERM, or the timeout; then prints `UPLOADED <payload bytes>`.

  leech --torrent F --save-path DIR [--peer IP:PORT]... [--timeout S]
        Download F into DIR from the given peers and/or the torrent's
        trackers (or from peers that dial it: it prints `PORT <n>` first).
        Prints `DONE <bytes> <seconds>` (seconds from adding the
        torrent to the last piece verified) and exits 0; exits 1 on error
        or timeout. With --stay it keeps seeding after that until stdin
        closes. With --magnet URI instead of --torrent it starts from the
        link and fetches the metadata from its peers first (BEP 9); the
        torrent is then written to --save-torrent if given. --no-pex leaves out libtorrent's default plugins, so the
        leecher never learns other peers through the seed (a benchmark
        measures what the seed alone sends). The DONE line also carries the
        wall-clock start and end (Unix seconds).

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
import os
import signal
import sys
import threading
import time

import libtorrent as lt


def log(*args):
    print("[lt]", *args, file=sys.stderr, flush=True)


PROFILES = ("tuned", "default", "default-tcp", "tuned-utp")


def settings(profile):
    hps = profile in ("tuned", "tuned-utp")
    s = lt.high_performance_seed() if hps else lt.default_settings()
    s.update(
        {
            "listen_interfaces": "127.0.0.1:0",
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


def start_session(a, pex=True):
    s = settings(a.profile)
    s.update(encryption_settings(a))
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


def drain(ses, verbose):
    for a in ses.pop_alerts():
        if verbose or isinstance(
            a, (lt.torrent_error_alert, lt.file_error_alert, lt.hash_failed_alert)
        ):
            log(type(a).__name__, a.message())


def stop_event():
    """Set when stdin reaches EOF or SIGTERM arrives: how a driver stops us."""
    ev = threading.Event()

    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            ev.set()

    threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: ev.set())
    return ev


def add(ses, a):
    if getattr(a, "magnet", None):
        atp = lt.parse_magnet_uri(a.magnet)
        atp.save_path = os.path.abspath(a.save_path)
        return ses.add_torrent(atp), None
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = os.path.abspath(a.save_path)
    return ses.add_torrent(atp), atp.ti


def peer_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def cmd_seed(a):
    stop = stop_event()
    ses = start_session(a)
    h, ti = add(ses, a)
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
            raise SystemExit(
                f"payload does not match the torrent ({st.num_pieces} of "
                f"{ti.num_pieces()} pieces)"
            )
        if time.monotonic() > deadline:
            raise SystemExit("timed out checking the payload")
        ses.wait_for_alert(100)
        drain(ses, a.verbose)
    print(f"PORT {ses.listen_port()}", flush=True)
    for p in a.peer:
        h.connect_peer(peer_addr(p))
    while not stop.wait(0.2):
        drain(ses, a.verbose)
        if time.monotonic() > deadline:
            log("seed timeout expired")
            break
    print(f"UPLOADED {h.status().total_payload_upload}", flush=True)


def cmd_leech(a):
    stop = stop_event() if a.stay else None
    ses = start_session(a, pex=not a.no_pex)
    # Its port, for a seed that is to dial this leecher instead.
    print(f"PORT {ses.listen_port()}", flush=True)
    t0 = time.monotonic()
    wall0 = time.time()
    h, ti = add(ses, a)
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
        drain(ses, a.verbose)
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
            drain(ses, a.verbose)
        print(f"UPLOADED {h.status().total_payload_upload}", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
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
        if name == "seed":
            c.add_argument(
                "--upload-limit",
                type=int,
                default=0,
                help="bytes per second, also on loopback (0: none)",
            )
        if name == "leech":
            c.add_argument("--stay", action="store_true", help="seed on until stdin closes")
            c.add_argument("--no-pex", action="store_true", help="no ut_pex (peers stay apart)")
            c.add_argument("--magnet", help="start from this magnet link instead of --torrent")
            c.add_argument("--save-torrent", help="write the torrent here once known")
    a = p.parse_args()
    if a.cmd == "seed":
        cmd_seed(a)
    else:
        sys.exit(cmd_leech(a))


if __name__ == "__main__":
    main()
