"""Where a radcore worker's CPU goes, kernel included: `perf record -e cpu-clock -g` on every thread.

py-spy (the other half of `bench.compare --profile`) names the Python and Cython frames a worker is
in, but it samples only the interpreter's threads and sees a system call as one opaque libc frame. On
a write-heavy worker that hides what the kernel does for it: the writeback a checkpoint's fdatasync
does on the worker's own core (walking the page cache, building block requests, notifying the disk),
the copies of pwrite, the socket stack, and the journal's flush thread, which is a plain pthread.
perf's cpu-clock samples count CPU time on every thread of the process, kernel stacks included, so
its shares add up to what the core actually spent.

Each sample goes to one category: a kernel sample by the system call it runs under (fdatasync, file
writes, sockets, page faults, anything else), a user-space sample by the object its innermost frame
belongs to (LMDB's C code apart from the py-lmdb binding that is built into the same object; libc;
the interpreter; radcore's Cython modules).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter

#: One sample per this many ns of a thread's CPU time (a fixed period, so samples x period is CPU
#: time); not a round number, so sampling does not beat with the batch loop's timers.
PERIOD_NS = 997_000
KERNEL = "[kernel.kallsyms]"

# Kernel samples: the system call they run under (`__x64_sys_<name>` in the stack) decides.
_SYSCALLS = (
    ("kernel: fdatasync (LMDB commits, journal flushes)", ("fdatasync", "fsync", "msync", "sync_file_range")),
    ("kernel: file writes (pwrite, writev into the page cache)", ("pwrite64", "pwritev", "pwritev2", "write",
                                                                 "writev")),
    ("kernel: UDP sockets", ("recvmmsg", "sendmmsg", "recvmsg", "sendmsg", "recvfrom", "sendto")),
)
_PAGE_FAULT = "kernel: page faults (reading LMDB's map)"
_KERNEL_OTHER = "kernel: other (scheduling, interrupts, other calls)"

# User-space samples: the object of the innermost frame decides (first match).
_OBJECTS = (
    ("LMDB (B-tree, dirty pages, commit)", re.compile(r"/lmdb/cpython[^/]*\.so$"), "mdb"),
    ("py-lmdb binding (argument parsing, buffers)", re.compile(r"/lmdb/cpython[^/]*\.so$"), None),
    ("codec (_fastpath, Cython)", re.compile(r"/_fastpath[^/]*\.so$"), None),
    ("card-auth lane (C: _cardauth)", re.compile(r"/_cardauth[^/]*\.so$"), None),
    ("accounting lane and journal encoding (C: _acctlane)", re.compile(r"/_acctlane[^/]*\.so$"), None),
    ("batch loop and duplicate cache (C: _lane, _dupcache)", re.compile(r"/_(lane|dupcache)[^/]*\.so$"), None),
    ("Python interpreter (objects, calls, GIL)", re.compile(r"/libpython[^/]*\.so|/python3[.0-9]*$"), None),
    ("libc (memcpy, memcmp, malloc, locks)", re.compile(r"/libc\.so|/libc-"), None),
    ("zlib (journal CRC)", re.compile(r"/libz[^/]*\.so"), None),
)
_OTHER = "other"

_FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def available() -> str | None:
    """Path of a `perf` this process may record with, or None."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-o", os.path.join(tmp, "probe.data"),
                               "--", "true"], capture_output=True, check=False)
    return perf if proc.returncode == 0 else None


def record(perf: str, pid: int, seconds: float) -> str:
    """`perf script` text (thread id, then one frame per line: address, symbol, object) of every
    thread of `pid` sampled for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-c", str(PERIOD_NS), "-g", "-p", str(pid),
                        "-o", data, "--", "sleep", str(seconds)], capture_output=True, check=True)
        return subprocess.run([perf, "script", "-i", data, "-F", "tid,ip,sym,dso"], capture_output=True,
                              text=True, check=True).stdout


def samples(script: str):
    """(thread id, [(symbol, object), ...] innermost first) per sample of `perf script` text."""
    tid, frames = None, []
    for line in script.splitlines():
        if not line.strip():
            if tid is not None:
                yield tid, frames
            tid, frames = None, []
        elif not line.startswith("\t"):  # the header: the thread id, right-aligned (space-padded)
            if tid is not None:
                yield tid, frames
            tid, frames = int(line.split()[0]), []
        else:
            match = _FRAME.match(line)
            if match:
                frames.append((match.group(1), match.group(2)))
    if tid is not None:
        yield tid, frames


def category(frames: list[tuple[str, str]]) -> str:
    """The category of one sample (see the module docstring)."""
    if not frames:
        return _OTHER
    symbol, obj = frames[0]
    if obj == KERNEL:
        for sym, where in frames:
            if where != KERNEL:
                break
            if sym.startswith(("__x64_sys_", "__do_sys_")):
                call = sym.split("_sys_", 1)[1]
                return next((name for name, calls in _SYSCALLS if call in calls), _KERNEL_OTHER)
            if "page_fault" in sym:
                return _PAGE_FAULT
        return _KERNEL_OTHER
    for name, pattern, prefix in _OBJECTS:
        if pattern.search(obj) and (prefix is None or symbol.startswith(prefix)):
            return name
    return _OTHER


def breakdown(script: str, main_tid: int, requests_per_s: float, seconds: float) -> dict:
    """Shares of the sampled CPU time per category and per thread, and CPU µs per request.

    `main_tid` is the worker's own thread (its pid); every other thread of the process is counted
    apart, so the journal's flush thread shows as such."""
    cats: Counter = Counter()
    threads: Counter = Counter()
    for tid, frames in samples(script):
        cats[category(frames)] += 1
        threads["worker thread" if tid == main_tid else "other threads (journal flush)"] += 1
    total = sum(cats.values())
    if not total:
        return {}
    cpu_seconds = total * PERIOD_NS / 1e9
    per_request_us = cpu_seconds / (requests_per_s * seconds) * 1e6 if requests_per_s else 0.0
    return {
        "samples": total,
        "cpu_share_of_one_core": round(cpu_seconds / seconds, 3),
        "cpu_us_per_request": round(per_request_us, 1),
        "categories": {name: {"share": round(n / total, 4), "us_per_request": round(n / total * per_request_us, 2)}
                       for name, n in cats.most_common()},
        "threads": {name: round(n / total, 4) for name, n in threads.most_common()},
    }
