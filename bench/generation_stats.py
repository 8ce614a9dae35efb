"""What the generation benchmark measures with: percentiles of durations, this process's memory
(sampled, so heap can be told from the LMDB map), and the machine a result was recorded on."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

from bench.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def mono() -> float:
    return time.monotonic()  # CLOCK_MONOTONIC: comparable between processes on this machine


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100); None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def dist_ms(values: list[float]) -> dict[str, Any]:
    """count, p50/p90/p99/p99.9/max in milliseconds of durations given in seconds."""
    return {"count": len(values), "p50_ms": ms(percentile(values, 50)), "p90_ms": ms(percentile(values, 90)),
            "p99_ms": ms(percentile(values, 99)), "p999_ms": ms(percentile(values, 99.9)),
            "max_ms": ms(max(values) if values else None),
            "mean_ms": ms(sum(values) / len(values) if values else None)}


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[name] = int(rest.split()[0])
    return out


class MemorySampler:
    """Polls /proc/self/status every `interval` s on a thread; VmHWM alone cannot tell heap from the
    LMDB map's file-backed pages (page cache the kernel can drop), so the peaks of both are kept."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.start = proc_status()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for k, v in proc_status().items():
            if v > self.peak.get(k, -1):
                self.peak[k] = v

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, float]:
        end = proc_status()
        def mib(kib: int) -> float:
            return round(kib / 1024, 1)

        return {"start_rss_mib": mib(self.start.get("VmRSS", 0)),
                "peak_rss_mib": mib(end.get("VmHWM", 0)),            # kernel high-water mark
                "peak_anon_mib": mib(self.peak.get("RssAnon", 0)),   # heap etc., sampled
                "peak_file_mib": mib(self.peak.get("RssFile", 0)),   # mapped files (LMDB map), sampled
                "end_anon_mib": mib(end.get("RssAnon", 0)), "end_file_mib": mib(end.get("RssFile", 0))}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "python": platform.python_version(), "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import lmdb
        import openpyxl
        info["lmdb"] = lmdb.__version__
        info["openpyxl"] = openpyxl.__version__
        from openpyxl import xml as _oxml
        info["openpyxl_lxml"] = bool(_oxml.LXML)
    except Exception as exc:  # noqa: BLE001 - informational only
        info["versions_error"] = repr(exc)
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info

