"""What a benchmark records about the machine it ran on, so a reader can judge the numbers: the CPU,
the load, the disk's flush latency, the hypervisor's CPU steal, and which code was measured."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's per-CPU jiffies ({"cpu0": [user, nice, system, idle, iowait, irq, softirq,
    steal, ...]}), empty where there is no /proc."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    return {f[0]: [int(x) for x in f[1:]] for f in (line.split() for line in lines)
            if f and f[0].startswith("cpu") and f[0] != "cpu"}


def steal_percent(before: dict[str, list[int]], after: dict[str, list[int]]) -> float | None:
    """CPU time the hypervisor gave to someone else between two `cpu_times`, as a percentage of all
    CPU time in that interval: on a shared virtual machine, the stalls no server can avoid."""
    total = steal = 0
    for cpu, now in after.items():
        then = before.get(cpu)
        if then is None or len(now) < 8 or len(then) < 8:
            continue
        total += sum(now[:8]) - sum(then[:8])
        steal += now[7] - then[7]
    return round(100.0 * steal / total, 2) if total > 0 else None


def fsync_probe(directory: Path, count: int = 100) -> dict:
    """fdatasync latency of a 4 KiB overwrite in `directory`: what one durable commit waits for (LMDB
    with metasync waits for two per commit)."""
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, bytes(1 << 20))
        os.fdatasync(fd)
        lat = []
        for i in range(count):
            os.pwrite(fd, os.urandom(4096), (i % 256) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    lat.sort()
    return {"p50": round(lat[len(lat) // 2]), "p90": round(lat[int(len(lat) * 0.9)]),
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))])}


def code_state() -> dict:
    """What was measured: the commit, files changed since, and a digest of radcore's sources."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "radcore").glob("*.py*")):
        if path.suffix in (".py", ".pyx", ".pxd"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--", "radcore").splitlines(),
            "radcore_sha256": digest.hexdigest()[:16]}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


