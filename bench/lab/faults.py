"""The lab's scripted faults, each with what must hold, checked from the
outside: pieces verified on disk (hashed by the lab), resume data (parsed
by the lab), the clients' stats lines and logs, and scripted peers'
reports. Each check prints PASS or FAIL with its evidence; a fault passes
when all its checks do. All faults run actorrent on every host.

  kill-leecher  kill -9 one leecher mid-download, restart it; --kills times
  kill-seed     kill -9 the seed once every piece has reached some leecher
  loss          1 % and 5 % packet loss at 200 ms one-way latency
  disk-full     a leecher's file system fills up; free it, restart
  corrupt       one host serves corrupt blocks
  flood         --flood-peers scripted peers connect to the seed at once
"""

import json
import os
import random
import re
import time
import tomllib

import labnet
import torrentfile
from labnet import log, sh
from swarm import EXTRA_ADDR, HERE, PORT, PY, SCENARIOS, SEED_ADDR, TRACKER_ADDR, TRACKER_PORT, Proc, Swarm

MIB = 1 << 20


class Checks:
    """PASS/FAIL lines for one fault."""

    def __init__(self, fault):
        self.fault = fault
        self.items = []

    def check(self, what, ok, evidence):
        self.items.append((what, bool(ok), evidence))
        print(f"{'PASS' if ok else 'FAIL'} [{self.fault}] {what}: {evidence}", flush=True)
        return ok

    @property
    def ok(self):
        return bool(self.items) and all(ok for _, ok, _ in self.items)


def fault_size(lab, default_mib):
    return (lab.args.fault_size_mib or default_mib) * MIB


def checked_have(proc):
    """`have` of the client's `checked` log line: pieces it holds after
    its resume check / recheck."""
    try:
        text = open(proc.log_path, errors="replace").read()
    except OSError:
        return None
    m = re.search(r"checked have=(\d+) pieces=(\d+)", text)
    return int(m.group(1)) if m else None


def recheck_reason(proc):
    """(reason, pieces) of the client's `rechecking` log line, if any."""
    try:
        text = open(proc.log_path, errors="replace").read()
    except OSError:
        return None
    m = re.search(r"rechecking reason=(.*?) pieces=(\d+)", text)
    return (m.group(1), int(m.group(2))) if m else None


def wait_for(pred, timeout, what, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def check_all_identical(c, sw, which, what="every other leecher completes, byte-identical"):
    bad = [(sw.lname(i), d) for i in which for ok, d in [sw.identical(i)] if not ok]
    done = [i for i in which if sw.leechers[i].complete_at is not None]
    for i in which:
        if i not in done:
            log(f"{sw.lname(i)} did not complete: {sw.leechers[i].last}\n{sw.leechers[i].log_tail()}")
    return c.check(what, len(done) == len(which) and not bad,
                   f"{len(done)}/{len(which)} completed; differing: {bad or 'none'}")


def check_resumed(c, sw, victim, proc, verified, what):
    """The victim's last run (`proc`) completed, downloaded exactly the
    pieces that were not verified on disk when it started, and its output
    is byte-identical."""
    final = next((ln for ln in proc.lines if ln.get("event") == "complete"), None)
    missing = sw.t.missing_bytes(verified)
    got = final.get("bytes_down") if final else None
    ok, detail = sw.identical(victim)
    return c.check(what, final is not None and ok and got == missing,
                   f"bytes_down {got} vs missing {missing} ({len(sw.t.hashes) - len(verified)} pieces); "
                   f"output {detail or ('equal' if ok else 'differs')}")


def start_swarm(sw, env=None, which=None):
    sw.start_tracker()
    sw.start_seed()
    t0 = time.monotonic()
    for i in (range(sw.n) if which is None else which):
        sw.start_leecher(i, env=env)
    return t0


# ------------------------------------------------------------ kill-leecher


# The victim saves resume data every 16 pieces (default 64, or 30 s): its
# runs between kills are short, and with the default no run would ever
# save, leaving the resume file's consistency unchecked.
VICTIM_ENV = {"ACTORRENT_RESUME_EVERY_PIECES": "16"}


def kill_and_restart(sw, victim, rng, cycles, verified_before):
    """One kill -9 of `victim` at a random moment after it received data,
    then a restart; checks that nothing verified was lost or forgotten.
    Returns the verified set at the restart, or None if it completed
    before it could be killed."""
    p = sw.leechers[victim]
    wait_for(lambda: (p.poll_stats() or {}).get("bytes_down", 0) > 0 or p.complete_at or not p.alive(),
             120, f"{p.name} to receive data")
    if p.complete_at is not None or not p.alive():
        return None
    time.sleep(rng.uniform(0.2, 1.2))
    p.poll_stats()
    if p.complete_at is not None:
        return None
    before = dict(p.last)
    p.kill9()
    verified = sw.verified_on_disk(victim)
    claimed = torrentfile.read_resume(sw.resume_path(victim))
    q = sw.start_leecher(victim, env=VICTIM_ENV)
    have = wait_for(lambda: checked_have(q) if checked_have(q) is not None else (not q.alive() and -1), 60,
                    f"{q.name} to check its data")
    cycle = dict(kill=len(cycles) + 1, verified_on_disk=len(verified), resume_claims=None if claimed is None else len(claimed),
                 checked_have=have, rechecked=recheck_reason(q),
                 bytes_down_seen=before.get("bytes_down"), pieces_done_seen=before.get("pieces_done"))
    cycles.append(cycle)
    problems = []
    if claimed is not None and not claimed <= verified:
        problems.append(f"resume data claims {len(claimed - verified)} pieces not on disk")
    if not verified_before <= verified:
        problems.append(f"{len(verified_before - verified)} verified pieces vanished from disk")
    if have != len(verified):
        problems.append(f"restart holds {have} pieces, {len(verified)} are verified on disk")
    cycle["problems"] = problems
    log(f"kill {cycle['kill']}: {json.dumps(cycle)}")
    return verified


def fault_kill_leecher(lab):
    c = Checks("kill-leecher")
    size = fault_size(lab, 256)
    n = lab.args.leechers
    kills = lab.args.kills
    rng = random.Random(lab.args.seed)
    victim = rng.randrange(n)
    # The victim's downlink is slowed so that `kills` restarts fit into its
    # download (about 4 s of data per kill); the others run at LAN rate.
    rate = max(5, int(size * 8 / 1e6 / (kills * 4)))
    sc = SCENARIOS["lan"]
    sw = Swarm(lab, "actorrent", sc, n, size, leech_links={victim: labnet.Link(sc["leech"][0], rate)}, tag="fault-kill-leecher")
    try:
        start_swarm(sw, which=[i for i in range(n) if i != victim])
        sw.start_leecher(victim, env=VICTIM_ENV)
        log(f"victim {sw.lname(victim)}, downlink {rate} Mbit/s, {kills} kills")
        cycles = []
        verified = set()
        while len(cycles) < kills:
            v = kill_and_restart(sw, victim, rng, cycles, verified)
            if v is None:
                break
            verified = v
        last = sw.leechers[victim]
        sw.wait_complete(range(n), lab.args.timeout)
        sw.poll()
        c.check(f"{kills} kills -9 happened mid-download", len(cycles) == kills,
                f"{len(cycles)} kills before the victim completed")
        bad = [cy for cy in cycles if cy["problems"]]
        c.check("no verified piece lost or forgotten across kills (resume claims only verified pieces; "
                "each restart holds exactly the pieces verified on disk)", not bad,
                f"{len(cycles)} cycles; verified on disk at each kill: {[cy['verified_on_disk'] for cy in cycles]}; "
                f"held after restart: {[cy['checked_have'] for cy in cycles]}; resume claims: {[cy['resume_claims'] for cy in cycles]}; "
                f"rechecks: {sorted({(cy['rechecked'] or ('none', 0))[0] for cy in cycles})}; "
                f"problems: {[(cy['kill'], cy['problems']) for cy in bad] or 'none'}")
        check_resumed(c, sw, victim, last, verified,
                      "the last run downloads exactly what was missing (no verified piece again), byte-identical")
        check_all_identical(c, sw, [i for i in range(n) if i != victim])
    finally:
        sw.close()
    return c


# --------------------------------------------------------------- kill-seed


def fault_kill_seed(lab):
    c = Checks("kill-seed")
    size = fault_size(lab, 256)
    n = lab.args.leechers
    sw = Swarm(lab, "actorrent", SCENARIOS["lan"], n, size, tag="fault-kill-seed")
    try:
        # Resume data every 8 pieces or every second, so the lab sees
        # early (from outside) that every piece has reached some leecher.
        t0 = start_swarm(sw, env={"ACTORRENT_RESUME_EVERY_PIECES": "8", "ACTORRENT_RESUME_EVERY_MS": "1000"})
        total = set(range(len(sw.t.hashes)))

        def covered():
            sw.poll()
            union = set()
            for i in range(n):
                union |= torrentfile.read_resume(sw.resume_path(i)) or set()
            return union >= total

        wait_for(covered, lab.args.timeout, "every piece to reach some leecher", step=0.2)
        sw.seed.poll_stats()
        seed_up = sw.seed.last.get("bytes_up", 0)
        done_before = sum(1 for p in sw.leechers if p.complete_at)
        progress = [p.last.get("pieces_done", 0) for p in sw.leechers]
        sw.seed.kill9()
        t_kill = time.monotonic()
        log(f"seed killed at {t_kill - t0:.1f} s, having uploaded {seed_up / size:.2f} x payload; "
            f"{done_before} leechers complete; pieces per leecher {progress}")
        c.check("seed killed before the swarm was done", done_before < n,
                f"at {t_kill - t0:.1f} s: {done_before}/{n} complete, pieces per leecher {progress} of {len(total)}, "
                f"seed had sent {seed_up / size:.2f} x payload")
        sw.wait_complete(range(n), lab.args.timeout)
        times = [round(p.complete_at - t_kill, 1) for p in sw.leechers if p.complete_at and p.complete_at > t_kill]
        check_all_identical(c, sw, range(n), "every leecher completes from the others, byte-identical")
        log(f"completions after the kill (s): {sorted(times)}")
    finally:
        sw.close()
    return c


# -------------------------------------------------------------------- loss


def fault_loss(lab):
    c = Checks("loss")
    size = fault_size(lab, 16)
    n = lab.args.leechers
    for permille in (10, 50):
        sc = dict(SCENARIOS["lan"], delay=200, jitter=0, loss=permille, mtu=1500)
        sw = Swarm(lab, "actorrent", sc, n, size, tag=f"fault-loss-{permille}")
        try:
            t0 = start_swarm(sw)
            pending = sw.wait_complete(range(n), lab.args.timeout)
            times = sorted(round(p.complete_at - t0, 1) for p in sw.leechers if p.complete_at)
            drops = sw.net.loss_counter()
            dl = sw.net.stop_delayline() or {}
            rate = drops / dl["released"] if dl.get("released") else None
            check_all_identical(c, sw, range(n), f"{permille / 10:g} % loss, 200 ms one way: every leecher completes, byte-identical")
            log(f"loss {permille / 10:g} %: completion times {times}; dropped {drops} of "
                f"{dl.get('released')} packets ({(rate or 0) * 100:.2f} %); not completed: {[sw.lname(i) for i in pending]}")
            c.check(f"{permille / 10:g} % loss was applied", rate is not None and abs(rate - permille / 1000) < permille / 1000 * 0.3,
                    f"nft dropped {drops} of {dl.get('released')} packets out of the delay line; last leecher at "
                    f"{times[-1] if len(times) == n else 'never'} s")
        finally:
            sw.close()
    return c


# --------------------------------------------------------------- disk-full


def fault_disk_full(lab):
    """The victim's download directory is an ext2 file system on a loop
    device: ext2 has no fallocate, so actorrent's preallocation falls back
    to sparse files and the disk really fills while pieces are written
    (on a file system with fallocate the preallocation would fail at
    start instead). A filler file leaves room for about 60 % of the
    payload; deleting it frees the space."""
    c = Checks("disk-full")
    size = fault_size(lab, 256)
    n = lab.args.leechers
    rng = random.Random(lab.args.seed + 1)
    victim = rng.randrange(n)
    sw = Swarm(lab, "actorrent", SCENARIOS["lan"], n, size, tag="fault-disk-full")
    img = os.path.join(lab.data, "victim-ext2.img")
    mnt = os.path.join(sw.host_dir(sw.lname(victim)), "out")
    try:
        with open(img, "wb") as f:
            f.truncate(size * 2 + 64 * MIB)
        sw.undo.push("ext2 image", lambda: os.path.exists(img) and os.unlink(img))
        sh("mkfs.ext2", "-q", "-F", "-m", "0", img, timeout=120)
        os.makedirs(mnt, exist_ok=True)
        sh("mount", "-o", "loop", img, mnt)
        sw.undo.push(f"umount {mnt}", lambda: sh("umount", mnt, check=False) or sh("umount", "-l", mnt, check=False))
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        filler = os.path.join(mnt, "filler")
        room = int(size * 0.6)
        with open(filler, "wb") as f:
            left = free - room
            block = b"\xa5" * MIB
            while left > 0:
                f.write(block[: min(MIB, left)])
                left -= MIB
        st = os.statvfs(mnt)
        log(f"victim {sw.lname(victim)}: ext2 at {mnt}, {st.f_bavail * st.f_frsize >> 20} MiB free for a {size >> 20} MiB payload")
        t0 = start_swarm(sw)
        p = sw.leechers[victim]
        wait_for(lambda: not p.alive() or p.complete_at, lab.args.timeout, "the victim to stop")
        p.poll_stats()
        logtext = open(p.log_path, errors="replace").read()
        c.check("the victim stops (exit 1) and its log says disk full", p.rc == 1 and "disk full" in logtext,
                f"exit {p.rc} after {time.monotonic() - t0:.1f} s; last log lines: {p.log_tail(3)!r}")
        last = p.last
        stats_text = json.dumps({k: v for k, v in last.items() if not k.startswith('_')})
        c.check("its last stats line says disk full", "disk full" in stats_text, f"last line: {stats_text}")
        verified = sw.verified_on_disk(victim)
        claimed = torrentfile.read_resume(sw.resume_path(victim))
        c.check("resume data claims only verified pieces", claimed is not None and claimed <= verified,
                f"{len(verified)} pieces verified on disk; resume data claims "
                f"{'none (missing or unreadable)' if claimed is None else len(claimed)}"
                f"{'' if claimed is None else ', not on disk: ' + str(len(claimed - verified))}")
        c.check("every verified piece is in the resume data", claimed is not None and claimed >= verified,
                f"{len(verified - (claimed or set()))} of {len(verified)} verified pieces missing from the resume data "
                f"(stats said {last.get('pieces_done')} done)")
        os.unlink(filler)
        q = sw.start_leecher(victim)
        sw.wait_complete(range(n), lab.args.timeout)
        have = checked_have(q)
        c.check("after space is freed the restart keeps every verified piece", have == len(verified),
                f"restart holds {have} pieces; {len(verified)} were verified on disk")
        check_resumed(c, sw, victim, q, verified, "it completes, downloading only what was missing, byte-identical")
        check_all_identical(c, sw, [i for i in range(n) if i != victim])
    finally:
        sw.close()
    return c


# ----------------------------------------------------------------- corrupt


def fault_corrupt(lab):
    c = Checks("corrupt")
    size = fault_size(lab, 128)
    n = lab.args.leechers
    sw = Swarm(lab, "actorrent", SCENARIOS["lan"], n, size, extra_host=True, tag="fault-corrupt")
    bad = None
    report = os.path.join(sw.host_dir("x"), "corrupt.json")
    try:
        sw.start_tracker()
        sw.start_seed()
        bad = Proc(lab, "corrupt", sw.net.ns("x"),
                   [PY, os.path.join(HERE, "corrupt_peer.py"), "--torrent", sw.pl["torrent"], "--payload", sw.pl["path"],
                    "--tracker", f"http://{TRACKER_ADDR}:{TRACKER_PORT}/announce", "--report", report,
                    "--listen", PORT, "--own-ip", EXTRA_ADDR, "--timeout", lab.args.timeout + 60])
        wait_for(lambda: (sw.scrape() or (0, 0))[0] >= 2, 30, "the tracker to list the corrupt host")
        t0 = time.monotonic()
        for i in range(n):
            sw.start_leecher(i)
        banned_at = {}

        def tick():
            for i, p in enumerate(sw.leechers):
                for ln in p.lines:
                    if ln.get("banned_peers", 0) >= 1 and i not in banned_at:
                        banned_at[i] = ln["_wall"]

        sw.wait_complete(range(n), lab.args.timeout, tick)
        tick()
        sw.stop_all()
        bad.stop()
        tally = json.load(open(report)) if os.path.exists(report) else {}
        served = {ip: e for ip, e in tally.items() if e["blocks"] > 0}
        per = []
        late = []
        for i, p in enumerate(sw.leechers):
            ip = f"198.18.2.{i + 1}"
            e = tally.get(ip, {})
            b = p.last.get("banned_peers", 0)
            per.append(f"{sw.lname(i)}: banned {b}, hash failures {p.last.get('hash_failures')}, "
                       f"blocks from it {e.get('blocks', 0)}, connections {e.get('connections', 0)}")
            if i in banned_at and e.get("last_block") and e["last_block"] > banned_at[i] + 2:
                after = [t for t in e.get("connected_at", []) if t > banned_at[i] + 2]
                late.append(f"{sw.lname(i)}: blocks until {e['last_block'] - banned_at[i]:.1f} s after its ban, "
                            f"{len(after)} connections after it")
        took = [i for i in range(n) if tally.get(f"198.18.2.{i + 1}", {}).get("blocks", 0) > 0]
        c.check("every leecher that took blocks from the corrupt host banned it",
                took and all(sw.leechers[i].last.get("banned_peers", 0) >= 1 for i in took),
                f"{len(took)}/{n} took blocks from it; " + "; ".join(per))
        c.check("no leecher took blocks from it after banning it", not late, "; ".join(late) or
                f"last block to each within 2 s of its ban (connections per leecher: "
                f"{[tally.get(f'198.18.2.{i + 1}', {}).get('connections', 0) for i in range(n)]})")
        c.check("the seed never took its blocks", SEED_ADDR not in served, f"served to: {sorted(served)}")
        check_all_identical(c, sw, range(n), "every leecher completes byte-identical")
        times = sorted(round(p.complete_at - t0, 1) for p in sw.leechers if p.complete_at)
        log(f"corrupt: completion times {times}")
    finally:
        if bad is not None:
            bad.kill9()
        sw.close()
    return c


# ------------------------------------------------------------------- flood


def memory_bound_mib(lab):
    """What the seed's peak RSS may be with default config: the buffer
    budget (block data in flight and read-ahead, process-wide), plus per
    connection its read buffer and send queue, plus 64 MiB of program and
    runtime. Returns (bound, how)."""
    out = sh(lab.args.actorrent, "config", "--print-default", capture=True).stdout
    cfg = tomllib.loads(out)
    budget = cfg["budget"]["capacity"]
    peers = min(cfg["max_peers_per_torrent"], cfg["max_connections"])
    per_peer = cfg["read_buffer"] + cfg["max_send_queue"]
    pending = cfg["max_pending_handshakes"] * 68
    bound = 64 * MIB + budget + peers * per_peer + pending
    how = (f"64 MiB + budget {budget >> 20} MiB + {peers} peers x (read_buffer {cfg['read_buffer'] >> 10} KiB + "
           f"max_send_queue {cfg['max_send_queue'] >> 10} KiB)")
    return bound / MIB, how, cfg


def fault_flood(lab):
    """Two orders: the flood hits a seed already serving its leechers, and
    the flood comes first and the leechers join while it holds on."""
    c = Checks("flood")
    for order in ("during", "before"):
        flood_once(lab, c, order)
    return c


def flood_once(lab, c, order):
    size = fault_size(lab, 128)
    n = lab.args.leechers
    peers = lab.args.flood_peers
    bound, how, cfg = memory_bound_mib(lab)
    limit = cfg["max_peers_per_torrent"]
    sw = Swarm(lab, "actorrent", SCENARIOS["lan"], n, size, extra_host=True, tag=f"fault-flood-{order}")
    fl = None
    report = os.path.join(sw.host_dir("x"), "flood.json")
    tag = "flood while serving" if order == "during" else "flood first, leechers join"
    try:
        sw.start_tracker()
        sw.start_seed()

        def start_flood():
            return Proc(lab, "flood", sw.net.ns("x"),
                        [PY, os.path.join(HERE, "flood.py"), "--target", f"{SEED_ADDR}:{PORT}",
                         "--info-hash", sw.t.info_hash, "--pieces", len(sw.t.hashes), "--peers", peers,
                         "--report", report, "--duration", lab.args.timeout])

        if order == "before":
            fl = start_flood()
            t_flood = time.monotonic()
            # Until the seed holds its limit of flood peers (or 10 s).
            try:
                wait_for(lambda: (sw.seed.poll_stats() or {}).get("peers", 0) >= limit, 10, "the flood to fill the seed")
            except RuntimeError:
                pass
        t0 = time.monotonic()
        for i in range(n):
            sw.start_leecher(i)
        if order == "during":
            wait_for(lambda: any((p.poll_stats() or {}).get("bytes_down", 0) > 0 for p in sw.leechers), 60,
                     "the swarm to start moving data")
            fl = start_flood()
            t_flood = time.monotonic()
        seed_peers = []

        def tick():
            sw.seed.read_hwm()
            seed_peers.append(sw.seed.last.get("peers", 0))

        # A swarm the flood locks out never completes: bound the wait by
        # ten times the LAN ideal (plus start-up), not the lab's timeout.
        sw.wait_complete(range(n), min(lab.args.timeout, 30 + 10 * size * 8 / 100e6), tick)
        hwm = (sw.seed.read_hwm() or 0) / 1024
        fl.stop()
        rep = json.load(open(report)) if os.path.exists(report) else {}
        times = sorted(round(p.complete_at - t0, 1) for p in sw.leechers if p.complete_at)
        seed_up = sw.seed.last.get("bytes_up", 0)
        log(f"{tag}: {json.dumps(rep)}; completion times {times}; flood started at {t_flood - t0:+.1f} s; "
            f"seed sent {seed_up / size:.2f} x payload")
        c.check(f"{tag}: the seed's connections stay within max_peers_per_torrent ({limit})",
                max(seed_peers, default=0) <= limit and rep.get("handshaked_at_once_max", 0) <= limit,
                f"seed reported at most {max(seed_peers, default=0)} peers; flood peers answered at once at most "
                f"{rep.get('handshaked_at_once_max')}; of {peers}: {rep.get('connected')} TCP-connected, "
                f"{rep.get('handshaked')} got a handshake, {rep.get('unchoked')} unchoked, "
                f"{rep.get('closed_by_target')} closed by the seed")
        check_all_identical(c, sw, range(n), f"{tag}: the seed keeps serving its real leechers: every one completes, byte-identical")
        c.check(f"{tag}: the seed's memory stays within its bound", hwm <= bound,
                f"VmHWM {hwm:.0f} MiB; bound {bound:.0f} MiB = {how}")
    finally:
        if fl is not None:
            fl.kill9()
        sw.close()


FAULTS = {
    "kill-leecher": fault_kill_leecher,
    "kill-seed": fault_kill_seed,
    "loss": fault_loss,
    "disk-full": fault_disk_full,
    "corrupt": fault_corrupt,
    "flood": fault_flood,
}


def run_faults(lab, names):
    if names == ["all"]:
        names = list(FAULTS)
    unknown = [x for x in names if x not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    results = []
    for name in names:
        log(f"=== fault {name}")
        try:
            c = FAULTS[name](lab)
        except (RuntimeError, OSError) as e:
            c = Checks(name)
            c.check("ran to the end", False, str(e))
        results.append(c)
        lab.results.append({"fault": name, "ok": c.ok, "checks": [dict(what=w, ok=o, evidence=e) for w, o, e in c.items]})
    print()
    for c in results:
        print(f"{'PASS' if c.ok else 'FAIL'} {c.fault} ({sum(ok for _, ok, _ in c.items)}/{len(c.items)} checks)")
    return 0 if all(c.ok for c in results) else 1


# ---------------------------------------------------------------------- ci


def cmd_ci(lab):
    """N = 4, 32 MiB, LAN, actorrent: one leecher is killed with SIGKILL
    once it holds a quarter of the pieces and restarted; every leecher
    must complete byte-identical, the restart must keep every piece that
    was verified on disk and download exactly the rest."""
    c = Checks("ci")
    n, size = lab.args.leechers, lab.args.size_mib * MIB
    sw = Swarm(lab, "actorrent", SCENARIOS["lan"], n, size, tag="ci")
    try:
        t0 = start_swarm(sw)
        victim = 0
        p = sw.leechers[victim]
        total = len(sw.t.hashes)
        wait_for(lambda: (p.poll_stats() or {}).get("pieces_done", 0) >= total // 4 or p.complete_at or not p.alive(),
                 lab.args.timeout, "the victim to hold a quarter of the pieces", step=0.02)
        killed = p.complete_at is None and p.alive()
        p.kill9()
        verified = sw.verified_on_disk(victim)
        c.check("a leecher was killed -9 mid-download", killed and len(verified) < total,
                f"{len(verified)}/{total} pieces verified on disk at the kill, {time.monotonic() - t0:.1f} s in")
        q = sw.start_leecher(victim)
        sw.wait_complete(range(n), lab.args.timeout)
        have = checked_have(q)
        c.check("the restart keeps every verified piece", have == len(verified),
                f"held {have} after its check; {len(verified)} were verified on disk")
        check_resumed(c, sw, victim, q, verified, "the restart downloads only the rest, byte-identical")
        check_all_identical(c, sw, range(n), "every leecher completes byte-identical")
    finally:
        sw.close()
    return 0 if c.ok else 1
