#!/usr/bin/python3
"""libtorrent on loopback, for the interop tests and the download benchmark.

Run it with /usr/bin/python3: the `python3` on PATH may be a pyenv build that
cannot import the distribution's libtorrent bindings.

Three modes:

  make  --data PATH --piece-size N --out FILE
        Create a v1-only torrent of PATH (a file or a directory) with
        lt.create_torrent. libtorrent 2.x writes hybrid v1+v2 torrents by
        default; actorrent speaks BEP 3, so v1_only.

  seed  --torrent FILE --save-path DIR [--seed-mode] [--timeout S]
        Seed FILE whose payload is DIR/<name>. Listens on 127.0.0.1 on a port
        the system chooses, prints `PORT <n>` on stdout once the torrent is
        seeding, and seeds until stdin closes, the timeout expires or
        SIGTERM arrives; then prints `UPLOADED <payload bytes sent>`. By
        default the data is rechecked before `PORT` is printed, so a wrong
        payload fails here instead of in the downloader; --seed-mode trusts
        the files and verifies pieces as they are served.

  leech --torrent FILE --save-path DIR --peer IP:PORT [--timeout S]
        Download FILE into DIR from the given peer only, fsync every file,
        print `DONE <bytes>` and exit 0; exit 1 on timeout or error. This is
        the second libtorrent session that validates the seeder, and the
        benchmark's baseline downloader.

Session settings shared by all modes (see `settings()`): start from
libtorrent's own high_performance_seed preset, so the seeder is not what
limits a downloader on loopback, and the baseline leech runs with exactly the
same settings. Then turn off everything that could find or reach peers other
than the ones named: DHT, local peer discovery, UPnP and NAT-PMP. uTP is off
too: libtorrent tries uTP first for outgoing connections to peers not known
to lack it, which would make the baseline leech measure uTP while actorrent
speaks TCP. Only TCP on 127.0.0.1 remains.
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


def settings():
    s = lt.high_performance_seed()
    s.update(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_tcp": True,
            "enable_outgoing_tcp": True,
            # The interop test may reconnect (a client retries a dropped
            # --peer), and every peer here shares 127.0.0.1.
            "allow_multiple_connections_per_ip": True,
            # Loopback peers count as local; keep them unthrottled explicitly.
            "ignore_limits_on_local_network": True,
            "alert_mask": lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.peer_notification,
        }
    )
    return s


def start_session():
    ses = lt.session(settings())
    # listen_port() is 0 until the listen socket is open.
    deadline = time.monotonic() + 10
    while ses.listen_port() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("libtorrent did not open a listen socket")
        ses.wait_for_alert(100)
        drain(ses)
    return ses


def drain(ses, verbose=True):
    """Pop alerts so the queue never fills; report the ones that explain a
    failure (errors, peer disconnects) on stderr."""
    for a in ses.pop_alerts():
        if not verbose:
            continue
        if isinstance(
            a,
            (
                lt.peer_disconnected_alert,
                lt.peer_error_alert,
                lt.torrent_error_alert,
                lt.file_error_alert,
                lt.hash_failed_alert,
                lt.listen_failed_alert,
                lt.peer_connect_alert,
                lt.incoming_connection_alert,
            ),
        ):
            log(type(a).__name__, a.message())


def stdin_closed_event():
    """An event set when stdin reaches EOF: closing the pipe is how a test
    tells the seeder to stop without a signal."""
    ev = threading.Event()

    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            ev.set()

    threading.Thread(target=watch, daemon=True).start()
    return ev


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


def cmd_seed(a):
    stop = stdin_closed_event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ses = start_session()
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = os.path.abspath(a.save_path)
    if a.seed_mode:
        atp.flags |= lt.torrent_flags.seed_mode
    h = ses.add_torrent(atp)

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
            # Recheck finished but the torrent is not complete: wrong data.
            raise SystemExit(
                f"payload under {atp.save_path} does not match the torrent "
                f"(state {st.state}, {st.num_pieces} of {atp.ti.num_pieces()} pieces)"
            )
        if time.monotonic() > deadline:
            raise SystemExit("timed out checking the payload")
        ses.wait_for_alert(100)
        drain(ses)

    print(f"PORT {ses.listen_port()}", flush=True)
    log(f"seeding {atp.ti.name()} on 127.0.0.1:{ses.listen_port()}")
    while not stop.wait(0.2):
        drain(ses, a.verbose)
        if time.monotonic() > deadline:
            log("seed timeout expired")
            break
    st = h.status()
    log(f"stopping; uploaded {st.total_upload} bytes")
    # Payload bytes sent, so a test can check its downloader was served here.
    print(f"UPLOADED {st.total_payload_upload}", flush=True)


def parse_peer(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def cmd_leech(a):
    ses = start_session()
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = os.path.abspath(a.save_path)
    h = ses.add_torrent(atp)
    for p in a.peer:
        h.connect_peer(parse_peer(p))

    deadline = time.monotonic() + a.timeout
    last_report = 0.0
    while True:
        st = h.status()
        if st.errc.value() != 0:
            log(f"torrent error: {st.errc.message()}")
            return 1
        if st.is_seeding or st.is_finished:
            break
        now = time.monotonic()
        if now > deadline:
            log(f"timed out with {st.num_pieces} of {atp.ti.num_pieces()} pieces")
            return 1
        if a.verbose and now - last_report > 1:
            last_report = now
            log(f"{st.num_pieces}/{atp.ti.num_pieces()} pieces, {st.download_rate} B/s, {st.num_peers} peers")
        # The peer may drop us (e.g. a restart): keep asking for it.
        if st.num_peers == 0:
            for p in a.peer:
                h.connect_peer(parse_peer(p))
        ses.wait_for_alert(50)
        drain(ses, a.verbose)

    # libtorrent 2.x writes through mmap, so "finished" means the pages are
    # in the page cache, not on disk. actorrent exits only after fsync; do
    # the same so the baseline pays for durability too.
    fs = atp.ti.files()
    for i in range(fs.num_files()):
        path = os.path.join(atp.save_path, fs.file_path(i))
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    print(f"DONE {atp.ti.total_size()}", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make", help="create a v1-only torrent")
    m.add_argument("--data", required=True, help="file or directory to share")
    m.add_argument("--piece-size", type=int, required=True)
    m.add_argument("--out", required=True, help="where to write the .torrent")

    s = sub.add_parser("seed", help="seed a torrent on 127.0.0.1")
    s.add_argument("--torrent", required=True)
    s.add_argument("--save-path", required=True, help="directory holding <name>")
    s.add_argument("--seed-mode", action="store_true", help="skip the recheck")
    s.add_argument("--timeout", type=float, default=600, help="seconds, then exit")
    s.add_argument("--verbose", action="store_true", help="log peer events")

    le = sub.add_parser("leech", help="download a torrent from given peers")
    le.add_argument("--torrent", required=True)
    le.add_argument("--save-path", required=True)
    le.add_argument("--peer", action="append", required=True, help="IP:PORT")
    le.add_argument("--timeout", type=float, default=600)
    le.add_argument("--verbose", action="store_true")

    a = p.parse_args()
    if a.cmd == "make":
        cmd_make(a)
    elif a.cmd == "seed":
        cmd_seed(a)
    else:
        sys.exit(cmd_leech(a))


if __name__ == "__main__":
    main()
