"""perf's CPU breakdown of a worker: the sample parser and categories on known stacks, the arithmetic of
shares and CPU per request, and a real `perf record` of a process that writes and flushes a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench import perf_profile as pp

LMDB = "/venv/lib/python3.11/site-packages/lmdb/cpython.cpython-311-x86_64-linux-gnu.so"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
K = "[kernel.kallsyms]"


def sample(tid: int, *frames: tuple[str, str]) -> str:
    lines = [f"{tid} "] + [f"\tffffffff81000000 {sym} ({obj})" for sym, obj in frames]
    return "\n".join(lines) + "\n\n"


FDATASYNC = sample(10, ("mpage_process_page_bufs", K), ("ext4_sync_file", K), ("__x64_sys_fdatasync", K),
                   ("do_syscall_64", K), ("fdatasync", LIBC), ("[unknown]", "[unknown]"))
PWRITE = sample(10, ("copy_folio_from_iter_atomic", K), ("vfs_write", K), ("__x64_sys_pwrite64", K),
                ("__libc_pwrite", LIBC))
SEND = sample(10, ("skb_segment", K), ("udp_sendmsg", K), ("__x64_sys_sendmmsg", K), ("__sendmmsg", LIBC))
FAULT = sample(10, ("filemap_fault", K), ("handle_mm_fault", K), ("exc_page_fault", K),
               ("asm_exc_page_fault", K), ("mdb_page_get", LMDB))
IRQ = sample(10, ("_raw_spin_unlock_irqrestore", K), ("handle_softirqs", K))
BTREE = sample(10, ("mdb_node_search", LMDB), ("mdb_page_search", LMDB), ("trans_get", LMDB))
BINDING = sample(10, ("parse_args.constprop.2", LMDB), ("trans_put", LMDB))
MEMCMP = sample(10, ("__memcmp_avx2_movbe", LIBC), ("mdb_cmp_memn", LMDB))
LANE = sample(10, ("__pyx_f_7radcore_9_acctlane_14AccountingLane_account",
                   "/src/radcore/_acctlane.cpython-311-x86_64-linux-gnu.so"))
LOOP = sample(10, ("__pyx_f_7radcore_9_dupcache_14DuplicateCache__find",
                   "/src/radcore/_dupcache.cpython-311-x86_64-linux-gnu.so"))
PYTHON = sample(10, ("_PyObject_Malloc", "/usr/lib/libpython3.11.so.1.0"))
FLUSHER = sample(11, ("blk_mq_submit_bio", K), ("__x64_sys_fdatasync", K), ("fdatasync", LIBC))


def test_each_sample_goes_to_the_category_of_its_system_call_or_innermost_object():
    expect = {
        FDATASYNC: "kernel: fdatasync (LMDB commits, journal flushes)",
        PWRITE: "kernel: file writes (pwrite, writev into the page cache)",
        SEND: "kernel: UDP sockets",
        FAULT: "kernel: page faults (reading LMDB's map)",
        IRQ: "kernel: other (scheduling, interrupts, other calls)",
        BTREE: "LMDB (B-tree, dirty pages, commit)",
        BINDING: "py-lmdb binding (argument parsing, buffers)",
        MEMCMP: "libc (memcpy, memcmp, malloc, locks)",
        LANE: "accounting lane and journal encoding (C: _acctlane)",
        LOOP: "batch loop and duplicate cache (C: _lane, _dupcache)",
        PYTHON: "Python interpreter (objects, calls, GIL)",
    }
    for text, name in expect.items():
        [(tid, frames)] = list(pp.samples(text))
        assert tid == 10
        assert pp.category(frames) == name, text


def test_parser_reads_back_to_back_samples_and_frames():
    # perf right-aligns the thread id: a short one comes with leading spaces.
    padded = "  " + sample(1524, ("mdb_node_search", LMDB))
    parsed = list(pp.samples(FDATASYNC + BTREE + FLUSHER + padded))
    assert [tid for tid, _ in parsed] == [10, 10, 11, 1524]
    assert parsed[3][1] == [("mdb_node_search", LMDB)]
    assert parsed[0][1][0] == ("mpage_process_page_bufs", K)
    assert parsed[0][1][-1] == ("[unknown]", "[unknown]")
    assert len(parsed[1][1]) == 3
    assert list(pp.samples("")) == []


def test_breakdown_shares_threads_and_cpu_per_request():
    # 6 samples on the worker, 2 on its flush thread: 8 x 997 µs of CPU.
    text = BTREE * 3 + FDATASYNC + SEND * 2 + FLUSHER * 2
    out = pp.breakdown(text, main_tid=10, requests_per_s=1000.0, seconds=2.0)
    assert out["samples"] == 8
    fsync = out["categories"]["kernel: fdatasync (LMDB commits, journal flushes)"]
    assert fsync["share"] == 0.375                          # 3 of 8
    assert out["categories"]["LMDB (B-tree, dirty pages, commit)"]["share"] == 0.375
    assert out["categories"]["kernel: UDP sockets"]["share"] == 0.25
    assert out["threads"] == {"worker thread": 0.75, "other threads (journal flush)": 0.25}
    cpu_us = 8 * pp.PERIOD_NS / 1000                         # 7,976 µs over 2,000 requests
    assert out["cpu_us_per_request"] == round(cpu_us / 2000, 1)
    assert fsync["us_per_request"] == round(0.375 * cpu_us / 2000, 2)
    assert out["cpu_share_of_one_core"] == round(cpu_us / 1e6 / 2.0, 3)
    assert pp.breakdown("", 10, 1000.0, 2.0) == {}


WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    os.pwrite(fd, b"x" * 65536, 0)
    os.fdatasync(fd)
"""


def test_records_where_a_real_process_spends_its_cpu(tmp_path):
    perf = pp.available()
    if perf is None:
        pytest.skip("perf is not installed or may not record here")
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "f"), "6"])
    try:
        time.sleep(0.5)
        script = pp.record(perf, child.pid, 2.0)
    finally:
        child.wait(timeout=30)
    out = pp.breakdown(script, child.pid, requests_per_s=1.0, seconds=2.0)
    assert out["samples"] > 0
    cats = out["categories"]
    assert out["threads"] == {"worker thread": 1.0}
    # A loop of 64 KiB pwrites and flushes spends most of its CPU in those two system calls.
    writing = sum(cats.get(name, {"share": 0})["share"] for name in (
        "kernel: fdatasync (LMDB commits, journal flushes)",
        "kernel: file writes (pwrite, writev into the page cache)"))
    assert writing > 0.5, cats
    assert os.path.getsize(tmp_path / "f") == 65536
