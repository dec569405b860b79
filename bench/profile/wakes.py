#!/usr/bin/python3
"""Wake-up syscalls per thread from an strace log.

    strace -f -qq -y -e trace=prctl,write,futex,epoll_wait -o trace.txt actorrent ...
    bench/profile/wakes.py trace.txt MIB

Threads are named by their `prctl(PR_SET_NAME)` (a trailing number folded,
so hash-0 and hash-1 are `hash-N`); a write to an fd strace -y names
`anon_inode:[eventfd]` is an eventfd wake-up (tokio's I/O driver), a
FUTEX_WAKE a wake-up of a parked thread (or a contended lock's release).
Prints counts per MiB of payload by thread.
"""
import collections
import re
import sys


def main():
    path, mib = sys.argv[1], float(sys.argv[2])
    names = {}
    cnt = collections.defaultdict(collections.Counter)
    for line in open(path):
        m = re.match(r"(\d+)\s+(.*)", line)
        if not m:
            continue
        tid, rest = m.group(1), m.group(2)
        n = re.match(r'prctl\(PR_SET_NAME, "([^"]*)"', rest)
        if n:
            names[tid] = re.sub(r"\d+$", "N", n.group(1))
            continue
        if rest.startswith("write("):
            fd = re.match(r"write\((\d+)<([^>]*)>", rest)
            cnt[tid]["eventfd" if fd and "eventfd" in fd.group(2) else "write-other"] += 1
        elif rest.startswith("futex("):
            cnt[tid]["futex_wake" if "FUTEX_WAKE" in rest else
                     "futex_wait" if "FUTEX_WAIT" in rest else "futex_other"] += 1
        elif rest.startswith("epoll_wait("):
            cnt[tid]["epoll_wait"] += 1
    by = collections.defaultdict(collections.Counter)
    for tid, c in cnt.items():
        by[names.get(tid, "main/other")].update(c)
    kinds = ["eventfd", "futex_wake", "futex_wait", "epoll_wait", "write-other"]
    print("thread".ljust(18), " ".join(k.rjust(11) for k in kinds), " (per MiB)")
    tot = collections.Counter()
    for name, c in sorted(by.items()):
        tot.update(c)
        print(name.ljust(18), " ".join(f"{c[k] / mib:11.2f}" for k in kinds))
    print("all".ljust(18), " ".join(f"{tot[k] / mib:11.2f}" for k in kinds))


if __name__ == "__main__":
    main()
