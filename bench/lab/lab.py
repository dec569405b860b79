#!/usr/bin/python3
"""The swarm lab: one seed and N leechers in network namespaces, with
shaped links, latency, loss and scripted faults. See README.md here.

  lab.py probe                      kernel features the lab can use
  lab.py bench [--scenarios lan,wan,asym,raw] [--clients actorrent,libtorrent]
  lab.py fault NAME... | all        kill-leecher kill-seed loss disk-full corrupt flood
  lab.py ci                         the short run the test suite makes
  lab.py cleanup                    remove what an interrupted lab left

Needs root, iproute2, nftables, opentracker; /usr/bin/python3 (the
distribution's, with python3-libtorrent) for the libtorrent runs.
Everything it creates (namespaces, links, the TUN device, a tmpfs, loop
devices, processes) is undone on every exit path; it refuses to start
when namespaces with its prefix exist.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import labnet  # noqa: E402
from labnet import log, sh  # noqa: E402
from faults import FAULTS, cmd_ci, run_faults  # noqa: E402
from swarm import SCENARIOS, Lab, Swarm, busy_fraction, ideal, machine_cpu, proc_cpu  # noqa: E402

SKIP = 3  # exit status: the lab cannot run here (not root, no netns)

# ------------------------------------------------------------------- bench


def bench_one(lab, client, name, n, size):
    sc = SCENARIOS[name]
    sw = Swarm(lab, client, sc, n, size, tag=f"{client}-{name}-{len(lab.results)}")
    try:
        sw.start_tracker()
        sw.start_seed()
        seed_cpu0 = proc_cpu(sw.seed.pid)
        cpu0 = machine_cpu()
        t0 = time.monotonic()
        for i in range(n):
            sw.start_leecher(i)
        hwm = {}

        def tick():
            hwm["seed"] = sw.seed.read_hwm()

        failed = sw.wait_complete(range(n), lab.args.timeout, tick)
        t_end = time.monotonic()
        busy = busy_fraction(cpu0, machine_cpu())
        times = sorted(p.complete_at - t0 for p in sw.leechers if p.complete_at)
        sw.stop_all()
        dl = sw.net.stop_delayline()
        loss = sw.net.loss_counter()
        ident = [sw.identical(i) for i in range(n)]
        first_i, last_i = ideal(sc, sw.t.total_length, n)
        seed_up = sw.seed.last.get("bytes_up", 0)
        leech_up = [p.last.get("bytes_up", 0) for p in sw.leechers]
        leech_cpu = [p.cpu or 0 for p in sw.leechers]
        peers_max = [max((ln.get("peers", 0) for ln in p.lines), default=0) for p in sw.leechers]
        res = dict(
            client=client, scenario=name, n=n, size=sw.t.total_length, loadavg=os.getloadavg(), machine_busy=busy,
            mtu=sw.net.mtu, delay_with=lab.delay_with,
            ideal_first=first_i, ideal_last=last_i,
            first=times[0] if times else None, last=times[-1] if len(times) == n else None,
            completed=len(times), wall=t_end - t0,
            seed_up=seed_up, seed_up_x=seed_up / sw.t.total_length,
            leech_up_x=[round(u / sw.t.total_length, 2) for u in leech_up],
            seed_cpu=(sw.seed.cpu or 0) - seed_cpu0, seed_hwm_mib=(hwm.get("seed") or 0) / 1024,
            leech_cpu_mean=sum(leech_cpu) / n, leech_cpu_max=max(leech_cpu),
            peers_max=peers_max,
            identical=sum(1 for ok, _ in ident if ok), identical_detail=sorted({d for _, d in ident}),
            failed=[sw.lname(i) for i in failed],
            delayline=dl, loss_drops=loss,
            protocol_errors=[p.last.get("protocol_errors") for p in sw.leechers],
            hash_failures=sum(p.last.get("hash_failures", 0) or 0 for p in sw.leechers),
            times=[round(t, 2) for t in times],
        )
        if failed:
            for i in failed:
                log(f"{sw.lname(i)} did not complete: {sw.leechers[i].last}\n{sw.leechers[i].log_tail()}")
        return res
    finally:
        sw.close()


def fmt_s(x):
    return "-" if x is None else f"{x:.1f}"


def table(results):
    rows = [
        "| scenario | client | N | MiB | first s (ideal) | last s (ideal) | last / ideal | seed up x payload | seed CPU s | leecher CPU s mean (max) | peers per leecher max | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['last'] / r['ideal_last']:.2f}" if r["last"] else "-"
        pm = r["peers_max"]
        rows.append(
            f"| {r['scenario']} | {r['client']} | {r['n']} | {r['size'] / 2**20:.0f} "
            f"| {fmt_s(r['first'])} ({r['ideal_first']:.1f}) | {fmt_s(r['last'])} ({r['ideal_last']:.1f}) | {ratio} "
            f"| {r['seed_up_x']:.2f} | {r['seed_cpu']:.1f} | {r['leech_cpu_mean']:.1f} ({r['leech_cpu_max']:.1f}) "
            f"| {min(pm)}-{max(pm)} | {r['identical']}/{r['n']} |"
        )
    return "\n".join(rows)


def cmd_bench(lab):
    a = lab.args
    size = a.size_mib << 20
    for name in a.scenarios.split(","):
        for client in a.clients.split(","):
            for rep in range(a.runs):
                log(f"--- {name} / {client} / N={a.leechers} / {a.size_mib} MiB (run {rep + 1})")
                r = bench_one(lab, client, name, a.leechers, size)
                lab.results.append(r)
                log(json.dumps(r))
                print(table([r]).splitlines()[-1], flush=True)
    print()
    print(table(lab.results))
    return 0 if all(r["completed"] == r["n"] and r["identical"] == r["n"] for r in lab.results) else 1


def cmd_cleanup(args):
    """Removes namespaces with the prefix (and their links, TUN and the
    processes inside), and tmpfs / loop mounts under /tmp/<prefix>-*."""
    for ns in labnet.existing_namespaces(args.prefix):
        pids = sh("ip", "netns", "pids", ns, capture=True, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)
        log("removed namespace", ns)
    tmp = tempfile.gettempdir()
    for line in open("/proc/self/mounts").read().splitlines()[::-1]:
        mnt = line.split()[1]
        if mnt.startswith(os.path.join(tmp, args.prefix + "-")):
            sh("umount", "-l", mnt, check=False)
            log("unmounted", mnt)
    out = sh("losetup", "-a", capture=True, check=False).stdout or ""
    for line in out.splitlines():
        if os.path.join(tmp, args.prefix + "-") in line:
            dev = line.split(":")[0]
            sh("losetup", "-d", dev, check=False)
            log("detached", dev)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="atlab", help="namespace name prefix (default atlab)")
    common.add_argument("--actorrent", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "actorrent"))
    common.add_argument("--delayline", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "delayline"))
    common.add_argument("--delay-with", choices=("auto", "netem", "delayline"), default="auto")
    common.add_argument("--leechers", "-n", type=int, default=16)
    common.add_argument("--size-mib", type=int, default=256)
    common.add_argument("--piece-kib", type=int, default=256)
    common.add_argument("--mtu", type=int, default=None, help="link MTU (default: the scenario's)")
    common.add_argument("--timeout", type=float, default=900, help="bound on each wait for completion, s")
    common.add_argument("--storage", choices=("tmpfs", "disk"), default="tmpfs")
    common.add_argument("--workdir", default=None)
    common.add_argument("--keep", action="store_true", help="keep logs and stats in the work dir")
    common.add_argument("--log-level", default="info", help="actorrent --log-level")
    common.add_argument("--actorrent-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for every actorrent (e.g. ACTORRENT_CHOKER_SLOTS=0)")
    common.add_argument("--seed", type=int, default=1, help="random seed (payload, victims, jitter)")
    common.add_argument("--json", default=None, help="write every result here")
    sub.add_parser("probe", parents=[common])
    b = sub.add_parser("bench", parents=[common])
    b.add_argument("--scenarios", default="lan,wan,asym,raw")
    b.add_argument("--clients", default="actorrent,libtorrent")
    b.add_argument("--runs", type=int, default=1)
    f = sub.add_parser("fault", parents=[common])
    f.add_argument("names", nargs="+", help=f"{', '.join(FAULTS)} or all")
    f.add_argument("--kills", type=int, default=20, help="kill-leecher: restarts of the victim")
    f.add_argument("--flood-peers", type=int, default=1000)
    f.add_argument("--fault-size-mib", type=int, default=None,
                   help="payload of every fault (default: 256 for kills and disk-full, 128 corrupt and flood, 16 loss)")
    sub.add_parser("ci", parents=[common])
    sub.add_parser("cleanup", parents=[common])
    args = p.parse_args()

    if args.cmd == "cleanup":
        return cmd_cleanup(args)
    labnet.install_signal_handlers()
    lab = Lab(args)
    why = lab.check_prerequisites()
    if why:
        print(f"SKIP: {why}", flush=True)
        return SKIP
    if args.cmd != "probe" and not os.access(args.actorrent, os.X_OK):
        raise SystemExit(f"no actorrent binary at {args.actorrent} (cargo build --release, or --actorrent PATH)")
    if args.cmd != "probe" and args.delay_with != "netem" and not os.access(args.delayline, os.X_OK):
        raise SystemExit(f"no delayline binary at {args.delayline} (cargo build --release -p actorrent-lab-delayline, or --delayline PATH)")
    try:
        if args.cmd == "probe":
            feats = labnet.probe_features(args.prefix)
            for k, v in feats.items():
                print(f"{k:18} {'yes' if v else 'no'}")
            return 0
        size = args.size_mib << 20
        fs_mib = (args.leechers + 4) * (size >> 20) * 2 + 512
        if args.cmd == "ci":
            args.leechers, args.size_mib = min(args.leechers, 4), min(args.size_mib, 32)
            fs_mib = (args.leechers + 4) * args.size_mib * 2 + 256
        lab.setup(fs_mib)
        if args.cmd == "bench":
            rc = cmd_bench(lab)
        elif args.cmd == "fault":
            rc = run_faults(lab, args.names)
        else:
            rc = cmd_ci(lab)
        return rc
    finally:
        if args.json and lab.results:
            with open(args.json, "w") as f:
                json.dump(lab.results, f, indent=1)
        lab.cleanup()


if __name__ == "__main__":
    sys.exit(main())
