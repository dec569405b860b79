#!/usr/bin/python3
"""Splits a `perf record -g` profile into exclusive cost buckets.

    perf script -i perf.data -F comm,tid,period,ip,sym,dso | bench/profile/buckets.py
    bench/profile/buckets.py --perf-data perf.data [--by-thread] [--seconds-per-sample 0.0005]

Each sample goes to the first bucket (in the order of BUCKETS) that any
frame of its call stack matches, so the buckets add up to 100 % and a page
fault taken inside memcpy counts as a page fault, a futex inside malloc as a
wake-up. With a sampling frequency (-F) the sample counts are also CPU
seconds (--hz). The rules are regular expressions on symbol names; they are
written for actorrent on Linux 6.x and say nothing about other programs.
"""

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict

# (bucket, regex over one frame's symbol); first match over the whole stack
# wins, buckets are tried in this order.
BUCKETS = [
    ("hash: SHA-1", r"sha1::|sha1_block|digest_blocks|Sha1"),
    ("page faults (first touch of new memory)", r"^(asm_)?exc_page_fault$|^handle_mm_fault$"),
    ("read buffer regrowth copy (BytesMut::reserve)", r"BytesMut::reserve_inner"),
    ("preallocation: fallocate", r"__x64_sys_fallocate|vfs_fallocate|shmem_fallocate|ext4_fallocate"),
    ("disk write: pwritev/pwrite", r"^do_pwritev$|__x64_sys_pwritev|ksys_pwrite64|__x64_sys_pwrite64"),
    ("disk read: pread/preadv", r"ksys_pread64|__x64_sys_pread64|^do_preadv$|__x64_sys_preadv"),
    ("sendfile/splice", r"__x64_sys_sendfile|do_sendfile|__x64_sys_splice"),
    ("socket receive: recvfrom/read", r"__x64_sys_recvfrom|__sys_recvfrom|tcp_recvmsg|__x64_sys_recvmsg|sock_read_iter"),
    ("socket send: writev/sendto", r"^do_writev$|__x64_sys_writev|__x64_sys_sendto|__sys_sendto|tcp_sendmsg|__x64_sys_sendmsg|sock_write_iter"),
    ("wake-ups: eventfd", r"eventfd_write|eventfd_read|eventfd_signal"),
    ("wake-ups: futex", r"__x64_sys_futex|futex_wait|futex_wake|do_futex"),
    ("wake-ups: epoll_wait", r"__x64_sys_epoll_wait|do_epoll_wait|__x64_sys_epoll_pwait"),
    ("scheduler (switches, preemption)", r"^schedule$|^__schedule$|try_to_wake_up|finish_task_switch|sched_yield|exit_to_user_mode_loop"),
    ("alloc: malloc/free/realloc/mmap/madvise", r"^(__libc_)?(malloc|free|realloc|calloc|cfree)$|_int_malloc|_int_free|_int_realloc|malloc_consolidate|unlink_chunk|__x64_sys_munmap|__x64_sys_mmap|__x64_sys_madvise|__x64_sys_brk|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::raw_vec|__x64_sys_mprotect"),
    ("memcpy in user space", r"__memmove|__memcpy|memcpy"),
    ("other syscalls", r"^entry_SYSCALL|^do_syscall_64"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in BUCKETS]


def samples(lines):
    """Yields (thread name, [symbols, innermost first]) per sample."""
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            comm, frames = line.split()[0], []
            # Thread names with a number: hash-0, hash-1 -> hash-N.
            comm = re.sub(r"-\d+$", "-N", comm)
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        sym = parts[1].rsplit(" (", 1)[0]
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        frames.append(sym)
    if comm is not None:
        yield comm, frames


# Frames that say nothing about whose code it is.
GENERIC = re.compile(r"^<?(core|alloc|std|u8|u16|u32|u64|usize|i32|i64|i128|f64|\[unknown\])(::|\]|$| as )")
MODULE = re.compile(r"^<?(?:&(?:mut )?)?([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?")


def classify(frames):
    """The first bucket any frame matches; else user code, named by the
    crate and module of the innermost frame that is not core/alloc/std."""
    for name, rx in COMPILED:
        for f in frames:
            if rx.search(f):
                return name
    for f in frames:
        if "::" not in f or GENERIC.match(f):
            continue
        m = MODULE.match(f)
        if m:
            crate, module = m.group(1), m.group(2)
            if crate in ("actors", "storage", "protocol", "actorrent"):
                return f"code: {crate}::{module}" if module else f"code: {crate}"
            return f"code: {crate}"
    if frames and frames[0].startswith("[unknown]"):
        return "unresolved"
    return "other (kernel or user)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--perf-data", help="run perf script on this file (else read stdin)")
    ap.add_argument("--hz", type=float, default=0, help="the -F of perf record: also print CPU seconds")
    ap.add_argument("--gib", type=float, default=0, help="payload GiB: also print CPU s/GiB")
    ap.add_argument("--by-thread", action="store_true", help="one table per thread name")
    ap.add_argument("--top", type=int, default=0, help="also the N hottest leaf symbols per bucket")
    ap.add_argument("--exclude-thread", action="append", default=[],
                    help="leave out samples of this thread name (e.g. actorrent: demo's setup and check)")
    a = ap.parse_args()
    if a.perf_data:
        p = subprocess.Popen(["perf", "script", "-i", a.perf_data, "-F", "comm,tid,period,ip,sym,dso"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
        src = p.stdout
    else:
        src = sys.stdin
    total = Counter()
    by_thread = defaultdict(Counter)
    leaves = defaultdict(Counter)
    n = 0
    for comm, frames in samples(src):
        if comm in a.exclude_thread:
            continue
        b = classify(frames)
        n += 1
        total[b] += 1
        by_thread[comm][b] += 1
        leaves[b][frames[0] if frames else "?"] += 1

    def show(title, c):
        s = sum(c.values())
        print(f"\n{title}: {s} samples" + (f", {s / a.hz:.2f} CPU s" if a.hz else ""))
        print("| bucket | share | " + ("CPU s | " if a.hz else "") + ("CPU s/GiB |" if a.hz and a.gib else ""))
        print("|---|---:|" + ("---:|" if a.hz else "") + ("---:|" if a.hz and a.gib else ""))
        for b, k in c.most_common():
            row = f"| {b} | {100 * k / s:.1f} % |"
            if a.hz:
                row += f" {k / a.hz:.3f} |"
                if a.gib:
                    row += f" {k / a.hz / a.gib:.3f} |"
            print(row)
            if a.top:
                for sym, m in leaves[b].most_common(a.top):
                    print(f"|   {sym[:90]} | {100 * m / s:.1f} % |" + (" |" if a.hz else "") + (" |" if a.hz and a.gib else ""))

    show("all threads", total)
    if a.by_thread:
        print("\n| thread | share |\n|---|---:|")
        for t, c in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
            print(f"| {t} | {100 * sum(c.values()) / n:.1f} % |")
        for t, c in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
            show(f"thread {t}", c)


if __name__ == "__main__":
    main()
