"""Card generation and export at scale, and what generation does to RADIUS while it runs.

    python -m bench.bench_generation [--cards 1000000] [--out bench/results/generation.json]

The README's figures (issue: "time and peak memory to generate 1,000,000 cards and to export them to
XLSX, and RADIUS auth throughput while a 1,000,000-card series is being generated; p99 accounting
latency during generation within 3x of idle"):

1. **Generation**: `radcore.generation.generate_series` of N activated cards on a durable store
   (sync on, as the control plane opens it) in a temp dir, in a child process: wall time, cards/s,
   peak RSS (the child's VmHWM, and RssAnon/RssFile sampled every 20 ms so the LMDB map's
   file-backed pages can be told from heap), data.mdb size and bytes per card, and every write
   transaction's lock wait, hold time (lock acquired -> commit returned) and commit (fsync) time.
2. **Export**: `control.export.export_cards` as the admin (`control.auth.LOCAL`), chunks written to a
   file, in a child process, for the N-card series and a 100,000-card series in the same store
   (constant memory is the claim), XLSX and CSV. With `--lxml-path DIR` (a `pip install --target DIR
   lxml`, outside the project venv) the 100,000-card XLSX export also runs with openpyxl on lxml.
3. **RADIUS during generation**: a real server (`python -m radcore.supervisor ... --handler
   radcore.handler:make_handler`, 2 workers) on a store with a 1,000-card series and a rate table.
   An open-loop UDP client sends Accounting Start/Stop pairs at a fixed rate (400 req/s, distinct
   Acct-Session-Ids, 8 source ports) and times each request from send to response: first idle,
   then while a child process generates an N-card series in the same data directory (its own Store,
   same map size, sync on). p99(during)/p99(idle) is checked against the 3x target for several
   `chunk_size` values, with pacing (sleep k x the last lock hold after each chunk, via the
   progress callback), and three controls: the same generation into a *different* data directory
   (CPU and disk contention without the shared writer lock), into the same one with sync off (no
   fsync inside the lock), and at nice 10. Each configuration can run the working tree's
   radcore/generation.py or, as a baseline, the one committed at git HEAD (`:head`, read with
   `git show`, nothing is checked out), and can override its PIN_RUN (`:rN`). Separately,
   Access-Request (card authentication) throughput with a closed window of 8 outstanding
   requests, idle vs during generation.

Every measurement runs `--repeat` times (default 2: the machine is shared and noisy) and all runs are
reported, with the load average around each and an idle window after each generation as a drift
check. Results: JSON to `--out`, a Markdown table beside it (same name, `.md`), and with `--raw`
per-request samples and lock holds to `<out stem>.raw.json` (git-ignored). Nothing here asserts on
speed; `bench/test_bench_generation.py` runs the same code on a few thousand cards as a smoke test.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as _dt
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any, Self

from bench.procs import launch, python_env, terminate, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

SECRET = "bench-generation-secret-0123456789"
BASE_SERIES = 45
BASE_CARDS = 1_000
GEN_SERIES = 46            # the big series generated while the server runs / in section 1
SMALL_SERIES = 47          # the 100,000-card series for the constant-memory export check
PIN_LENGTH = 10
FACE_BALANCE = 1_000_000 * 1_000_000
CALLED = b"442079460000"
MAP_SIZE_MB = 8192         # server.map_size_mb; every process opening a store uses the same
DEFAULT_CHUNK = 500        # control.series.DEFAULT_CHUNK and generate_series' default
TARGET_RATIO = 3.0


# --------------------------------------------------------------------------------------------------
# Small helpers

def _mono() -> float:
    return time.monotonic()  # CLOCK_MONOTONIC: comparable between processes on this machine


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100); None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def dist_ms(values: list[float]) -> dict[str, Any]:
    """count, p50/p90/p99/p99.9/max in milliseconds of durations given in seconds."""
    return {"count": len(values), "p50_ms": _ms(percentile(values, 50)), "p90_ms": _ms(percentile(values, 90)),
            "p99_ms": _ms(percentile(values, 99)), "p999_ms": _ms(percentile(values, 99.9)),
            "max_ms": _ms(max(values) if values else None),
            "mean_ms": _ms(sum(values) / len(values) if values else None)}


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
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": model,
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


# --------------------------------------------------------------------------------------------------
# Child processes: every figure with a memory claim, and every generator racing the server, runs in
# its own interpreter (`python -m bench.bench_generation --child SPEC.json`).

class Child:
    """A `--child` subprocess; `wait()` reaps it with wait4 to get its own ru_maxrss."""

    def __init__(self, spec: dict[str, Any], workdir: Path, *, extra_path: str | None = None):
        self.spec = dict(spec)
        self.result_path = Path(tempfile.mkstemp(prefix="child-", suffix=".json", dir=workdir)[1])
        self.spec["result"] = str(self.result_path)
        spec_path = self.result_path.with_suffix(".spec.json")
        spec_path.write_text(json.dumps(self.spec))
        self.log_path = self.result_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.bench_generation", "--child", str(spec_path)],
                                     cwd=str(ROOT), env=python_env(*([extra_path] if extra_path else [])), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.maxrss_kib = 0

    def poll(self) -> bool:
        """True once the child has exited (and is reaped)."""
        if self.proc.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status, usage)
        return True

    def _reaped(self, status: int, usage) -> None:
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.maxrss_kib = usage.ru_maxrss
        self._log.close()

    def wait(self, timeout: float = 3600) -> dict[str, Any]:
        deadline = _mono() + timeout
        while not self.poll():
            if _mono() > deadline:
                self.kill()
                raise TimeoutError(f"child {self.spec['task']} did not finish in {timeout} s")
            time.sleep(0.05)
        return self.result()

    def result(self) -> dict[str, Any]:
        if self.proc.returncode != 0:
            raise RuntimeError(f"child {self.spec['task']} exited with {self.proc.returncode}:\n"
                               + self.log_path.read_text(errors="replace")[-4000:])
        out = json.loads(self.result_path.read_text())
        out["ru_maxrss_mib"] = round(self.maxrss_kib / 1024, 1)
        return out

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, usage = os.wait4(self.proc.pid, 0)
            self._reaped(status, usage)


def _proc_io() -> dict[str, int]:
    """/proc/self/io of this process (rchar, wchar, read_bytes, write_bytes, ...)."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f)}
    except OSError:
        return {}


def _device_sectors_written(path: str) -> int | None:
    """Sectors written by the whole block device holding `path` (machine-wide: includes other work)."""
    try:
        dev = os.stat(path).st_dev
        sysdir = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        stat = Path(sysdir, "stat")
        if not stat.exists():
            stat = Path(sysdir).resolve().parent / "stat"
        return int(stat.read_text().split()[6])
    except (OSError, ValueError, IndexError):
        return None


def head_generation_source(dest: Path, rev: str = "HEAD") -> dict[str, str] | None:
    """Write radcore/generation.py as committed at `rev` to `dest` (read-only `git show`), the
    baseline a working-tree change to generation is compared with. None without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        source = subprocess.run(["git", "show", f"{commit}:radcore/generation.py"], cwd=ROOT,
                                capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    dest.write_bytes(source)
    return {"path": str(dest), "commit": commit, "sha256": hashlib.sha256(source).hexdigest()[:16]}


def _generation_module(spec: dict[str, Any]):
    """radcore.generation as in the working tree (code "current"), or the HEAD copy (code "head")
    loaded under another name; it imports the same radcore.store/keys/rating as the server."""
    if spec.get("code", "current") == "current":
        from radcore import generation
        return generation
    loader_spec = importlib.util.spec_from_file_location("radcore_generation_head", spec["head_path"])
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def _open_store(path: str, *, sync: bool = True):
    from radcore.store import Store
    return Store(path, map_size=MAP_SIZE_MB << 20, sync=sync)


@contextmanager
def _instrumented(store, log: list[tuple[float, float, float, float]]):
    """Time every write transaction the code under test opens with `store.transaction(write=True)`:
    (begin called, lock acquired, body done / commit called, commit returned), monotonic seconds.
    Wraps the instance only; radcore's code is unchanged."""
    from radcore.store import Store
    original = Store.transaction

    @contextmanager
    def transaction(write: bool = False):
        if not write:
            with original(store, write=False) as txn:
                yield txn
            return
        t0 = _mono()
        txn = store.begin(write=True)
        t1 = _mono()
        try:
            yield txn
        except BaseException:
            txn.abort()
            raise
        t2 = _mono()
        try:
            txn.commit()
        except Exception as e:  # lmdb.Error, as Store.transaction would translate it
            raise store.error(e) from e
        log.append((t0, t1, t2, _mono()))

    store.transaction = transaction
    try:
        yield
    finally:
        del store.transaction


def _txn_summary(log: list[tuple[float, float, float, float]]) -> dict[str, Any]:
    return {"count": len(log),
            "lock_wait": dist_ms([t1 - t0 for t0, t1, _, _ in log]),
            "hold": dist_ms([t3 - t1 for _, t1, _, t3 in log]),
            "commit": dist_ms([t3 - t2 for _, _, t2, t3 in log]),
            "held_fraction": (round(sum(t3 - t1 for _, t1, _, t3 in log) / (log[-1][3] - log[0][0]), 3)
                              if len(log) > 1 else None)}


def _store_stats(store) -> dict[str, Any]:
    env = store.env
    info, stat = env.info(), env.stat()
    psize = stat["psize"]
    out: dict[str, Any] = {"page_size": psize, "used_bytes": (info["last_pgno"] + 1) * psize}
    with env.begin() as txn:
        for name in ("cards", "pins"):
            s = txn.stat(getattr(store, name))
            out[name] = {"entries": s["entries"], "depth": s["depth"], "leaf_pages": s["leaf_pages"],
                         "branch_pages": s["branch_pages"], "overflow_pages": s["overflow_pages"],
                         "bytes": (s["leaf_pages"] + s["branch_pages"] + s["overflow_pages"]) * psize}
    return out


def provision_base(path: str, *, cards: int = BASE_CARDS, sync: bool = False) -> dict[str, str]:
    """Rate table `retail` (prefix 44) and series 45 of `cards` activated cards; returns number -> PIN."""
    from radcore.clock import system_clock
    from radcore.generation import generate_series
    from radcore.keys import KeyRing
    from radcore.rating import Rate, put_rate, put_rate_table
    from radcore.store import CardStatus, RateTable, Series, card_key, get_card

    store = _open_store(path, sync=sync)
    keyring = KeyRing.load_or_create(os.path.join(path, "radcore.key"))
    try:
        with store.begin(write=True) as txn:
            put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
            put_rate(txn, store, "retail", Rate(prefix="44", price_per_minute=120_000, connection_fee=50_000,
                                                 min_volume=60, interval=6))
        pins: dict[str, str] = {}
        if cards:
            generate_series(store, keyring, Series(
                number=BASE_SERIES, name="bench-base", face_balance=FACE_BALANCE, quantity=cards,
                pin_length=PIN_LENGTH, rate_table="retail", initial_status=CardStatus.ACTIVATED,
                max_concurrent_calls=0xFFFF), clock=system_clock, chunk_size=min(cards, 20_000))
            with store.begin() as txn:
                for serial in range(cards):
                    key = card_key(BASE_SERIES, serial)
                    pins[f"{BASE_SERIES}-{serial:09d}"] = keyring.decrypt_pin(get_card(txn, store, key).pin_blob, key)
        store.env.sync(True)
        return pins
    finally:
        store.close()


def child_generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate `cards` cards as series `series` with `chunk_size`, timing every write transaction."""
    from radcore.clock import system_clock
    from radcore.keys import KeyRing
    from radcore.store import CardStatus, Series

    g = _generation_module(spec)
    if spec.get("pin_run"):
        if not hasattr(g, "PIN_RUN"):
            raise SystemExit(f"{g.__file__} has no PIN_RUN to override")
        g.PIN_RUN = spec["pin_run"]  # module global read per draw; this process only
    chunk_kw = {"chunk_size": spec["chunk_size"]} if spec.get("chunk_size") else {}
    chunk_used = spec.get("chunk_size") or inspect.signature(g.generate_series).parameters["chunk_size"].default
    path = spec["path"]
    if spec.get("nice"):
        os.nice(spec["nice"])  # the generator's CPU priority only; the server is untouched
    if spec.get("provision"):
        provision_base(path, cards=0, sync=spec.get("sync", True))
    store = _open_store(path, sync=spec.get("sync", True))
    keyring = KeyRing.load_or_create(os.path.join(path, "radcore.key"))
    log: list[tuple[float, float, float, float]] = []
    pause_factor = float(spec.get("pause_factor") or 0)
    paused = [0.0]

    def progress(done: int, total: int) -> None:
        # Runs after each committed chunk, outside the writer lock (as control.series' progress
        # does). Pacing: sleep `pause_factor` x the hold time of the chunk just committed, so the
        # generator holds the lock (and streams its writes) at most 1/(1+factor) of the time.
        if pause_factor and done < total:
            _, t1, _, t3 = log[-1]
            time.sleep(pause_factor * (t3 - t1))
            paused[0] += pause_factor * (t3 - t1)

    io0, dev0 = _proc_io(), _device_sectors_written(path)
    try:
        with MemorySampler() as mem, _instrumented(store, log):
            t0 = _mono()
            series = g.generate_series(store, keyring, Series(
                number=spec["series"], name=f"bench-{spec['series']}", face_balance=10_000_000,
                quantity=spec["cards"], pin_length=PIN_LENGTH, rate_table="retail",
                initial_status=CardStatus.ACTIVATED), clock=system_clock, progress=progress, **chunk_kw)
            t1 = _mono()
        io1, dev1 = _proc_io(), _device_sectors_written(path)
        assert series.complete and series.generated == spec["cards"], series
        stats = _store_stats(store) if spec.get("store_stats", True) else {}
    finally:
        store.close()
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    wall = t1 - t0
    # wchar: bytes LMDB handed to write()/pwrite() (its dirty pages; it writes nothing else).
    # write_bytes (page-cache accounting) is NOT used: on this kernel (6.18, ext4 large folios) a 4 KiB
    # pwrite is accounted as a whole folio, ~7x what reaches the device (checked against /sys/block).
    written = io1.get("wchar", 0) - io0.get("wchar", 0)
    commits = max(len(log), 1)
    prep = [b[0] - a[3] for a, b in pairwise(log)]  # between a commit and the next begin
    return {"task": "generate", "cards": spec["cards"], "chunk_size": chunk_used,
            "code": spec.get("code", "current"), "generation_py": g.__file__,
            "generation_sha256": hashlib.sha256(Path(g.__file__).read_bytes()).hexdigest()[:16],
            "pin_run": getattr(g, "PIN_RUN", None),
            # niceness the code adds to its own generating thread (None: the code has no such thread)
            "generation_nice": getattr(g, "GENERATION_NICE", None),
            "sync": spec.get("sync", True), "pause_factor": pause_factor, "paused_s": round(paused[0], 2),
            "lmdb_written_bytes": written, "written_bytes_per_card": round(written / spec["cards"]),
            "written_bytes_per_commit": round(written / commits),
            "device_written_bytes_machine_wide": (dev1 - dev0) * 512 if dev0 is not None and dev1 is not None
            else None,
            "between_txns": dist_ms(prep),
            "t_start": t0, "t_end": t1, "wall_s": round(wall, 3),
            "cards_per_s": round(spec["cards"] / wall), "memory": mem.report(), "data_mdb_bytes": size,
            "bytes_per_card_file": round(size / spec["cards"], 1), "store": stats,
            "txn": _txn_summary(log), "txn_log": log if spec.get("keep_txn_log") else None}


def child_export(spec: dict[str, Any]) -> dict[str, Any]:
    """Export series `series` as `fmt` to `out`, chunk by chunk, the way the gRPC stream would."""
    from openpyxl import xml as _oxml

    from control.auth import LOCAL
    from control.cards import CardFilter
    from control.export import Chunk, Finished, Rows, Started, export_cards
    from radcore.clock import system_clock
    from radcore.keys import KeyRing

    store = _open_store(spec["path"])
    keyring = KeyRing.load_or_create(os.path.join(spec["path"], "radcore.key"))
    finished = None
    first_chunk = None
    chunks = 0
    try:
        with MemorySampler() as mem, open(spec["out"], "wb") as out:
            t0 = _mono()
            for event in export_cards(store, keyring, LOCAL, CardFilter(series=spec["series"]),
                                      fmt=spec["fmt"], clock=system_clock):
                if isinstance(event, Chunk):
                    if first_chunk is None:
                        first_chunk = _mono() - t0
                    out.write(event.data)
                    chunks += 1
                elif isinstance(event, Finished):
                    finished = event
                elif not isinstance(event, (Rows, Started)):
                    raise TypeError(f"unexpected export event {event!r}")
            t1 = _mono()
    finally:
        store.close()
    assert finished is not None and finished.rows == spec["rows"], finished
    size = os.path.getsize(spec["out"])
    assert size == finished.size, (size, finished)
    wall = t1 - t0
    result = {"task": "export", "fmt": spec["fmt"], "rows": finished.rows, "sheets": finished.sheets,
              "wall_s": round(wall, 3), "rows_per_s": round(finished.rows / wall),
              "first_chunk_s": round(first_chunk or 0.0, 3), "chunks": chunks, "file_bytes": size,
              "lxml": bool(_oxml.LXML), "memory": mem.report()}
    if not spec.get("keep_file"):
        os.unlink(spec["out"])
    return result


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    task = {"generate": child_generate, "export": child_export}[spec["task"]]
    result = task(spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------
# Sections 1 and 2: generation and export figures

def bench_generation(workdir: Path, *, cards: int, chunk_size: int = 0, code: str = "current",
                     head_path: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Section 1: generate `cards` cards into a fresh durable store under `workdir`/var (kept)."""
    path = workdir / "var"
    gen = Child({"task": "generate", "path": str(path), "provision": True, "series": GEN_SERIES,
                 "cards": cards, "chunk_size": chunk_size, "sync": True, "code": code,
                 "head_path": head_path}, workdir).wait()
    say(f"  generate {cards:,} ({code} generation.py, chunk {gen['chunk_size']}): {gen['wall_s']} s, "
        f"{gen['cards_per_s']:,} cards/s, peak RSS {gen['memory']['peak_rss_mib']} MiB (anon "
        f"{gen['memory']['peak_anon_mib']}), {gen['bytes_per_card_file']} B/card on disk, "
        f"{gen['written_bytes_per_card']} B/card written, hold p50/p99 {gen['txn']['hold']['p50_ms']}/"
        f"{gen['txn']['hold']['p99_ms']} ms")
    return gen


def bench_generation_and_export(workdir: Path, *, cards: int, small: int, chunk_size: int,
                                lxml_path: str | None, formats: tuple[str, ...] = ("xlsx", "csv"),
                                say: Callable[[str], None] = print) -> dict[str, Any]:
    """One repetition of sections 1 and 2 in a fresh data directory under `workdir`."""
    path = workdir / "var"
    gen = bench_generation(workdir, cards=cards, chunk_size=chunk_size, say=say)
    exports: list[dict[str, Any]] = []
    sizes = [(GEN_SERIES, cards)]
    if small and small < cards:
        # untimed: a smaller series in the same store, for the "does not grow with N" comparison
        Child({"task": "generate", "path": str(path), "series": SMALL_SERIES, "cards": small,
               "chunk_size": min(small, 20_000), "sync": False, "store_stats": False}, workdir).wait()
        sizes.insert(0, (SMALL_SERIES, small))
    variants = [(fmt, None) for fmt in formats]
    if lxml_path and "xlsx" in formats:
        variants.insert(1, ("xlsx", lxml_path))
    for fmt, extra in variants:
        # openpyxl on lxml is a what-if (lxml is not a dependency): the small size is enough to compare
        for series, rows in (sizes[:1] if extra else sizes):
            res = Child({"task": "export", "path": str(path), "series": series, "rows": rows, "fmt": fmt,
                         "out": str(workdir / f"export-{series}.{fmt}")}, workdir, extra_path=extra).wait()
            exports.append(res)
            say(f"  export {fmt}{'+lxml' if res['lxml'] else ''} {rows:,}: {res['wall_s']} s, "
                f"{res['rows_per_s']:,} rows/s, peak RSS {res['memory']['peak_rss_mib']} MiB "
                f"(anon {res['memory']['peak_anon_mib']}), {res['file_bytes']:,} B")
    shutil.rmtree(path, ignore_errors=True)
    return {"generation": gen, "exports": exports}


# --------------------------------------------------------------------------------------------------
# Section 3: a real server, an open-loop accounting client and a closed-loop auth client

def write_server_config(directory: Path, data_dir: Path, *, workers: int) -> Path:
    """Like tests/helpers_server.write_config (loopback, every port 0), plus map_size_mb and info logs."""
    text = "\n".join([
        "[server]", f"data_dir = {json.dumps(str(data_dir))}", f"workers = {workers}",
        'auth_listen = "127.0.0.1:0"', 'acct_listen = "127.0.0.1:0"', 'metrics_listen = "127.0.0.1:0"',
        "duplicate_cache_seconds = 30", 'log_level = "info"', f"map_size_mb = {MAP_SIZE_MB}", "",
        "[control]", 'grpc_listen = "127.0.0.1:0"', 'portal_listen = "127.0.0.1:0"', "",
        "[[clients]]", 'name = "bench"', 'network = "127.0.0.1"', f"secret = {json.dumps(SECRET)}",
        'profile = "cisco"', ""])
    path = directory / "radcore.toml"
    path.write_text(text)
    return path


class Server:
    """`python -m radcore.supervisor --config X --ready-file Y --handler radcore.handler:make_handler`,
    stopped by PID (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, config: Path):
        self.ready_file = config.parent / "ready.json"
        self.log_path = config.parent / "server.log"
        self.proc, self._log = launch(
            [sys.executable, "-m", "radcore.supervisor", "--config", str(config), "--ready-file",
             str(self.ready_file), "--handler", "radcore.handler:make_handler"],
            self.log_path, cwd=config.parent, env=python_env())
        self.ready: dict[str, Any] = {}

    def __enter__(self) -> Self:
        try:
            wait_ready(self.proc, self.ready_file.exists, what="radcore", timeout=30, log=self.log,
                       stop=self.stop)
            self.ready = json.loads(self.ready_file.read_text())  # the supervisor renames it into place
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            terminate(self.proc, 15)
        finally:
            self._log.close()


class _Sockets:
    def __init__(self, count: int):
        self.socks = []
        self.sel = selectors.DefaultSelector()
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, i)

    def close(self) -> None:
        self.sel.close()
        for s in self.socks:
            s.close()

    def receive(self, timeout: float) -> Iterator[tuple[int, bytes, float]]:
        """(socket index, datagram, arrival time) for everything that arrives within `timeout`."""
        for key, _ in self.sel.select(timeout):
            sock = self.socks[key.data]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                yield key.data, data, _mono()


class AcctLoad:
    """Open loop: request k is due at t0 + k/rate; even k = Start of session k//2, odd k = its Stop
    (Acct-Session-Time 30), both on source port session % sockets, so one worker sees them in order.
    A late client sends what is due at once (and records how late it was); latency is send -> reply."""

    def __init__(self, port: int, *, rate: float, sockets: int = 8, cards: list[str]):
        self.port = port
        self.interval = 1.0 / rate
        self.net = _Sockets(sockets)
        self.cards = cards
        self.secret = SECRET.encode()
        self.ident = [0] * sockets
        self.pending: dict[tuple[int, int], tuple[float, float]] = {}   # (sock, id) -> (due, sent)
        self.samples: list[tuple[float, float, float]] = []              # (due, sent, latency)
        self.lost: list[float] = []                                      # sent times never answered
        self.bad = 0
        self.k = 0
        self.t0 = 0.0
        self.run_tag = os.urandom(3).hex()

    def _packet(self, k: int, ident: int) -> bytes:
        from radcore import dictionary as d
        from radcore import packet
        session = k // 2
        stop = k % 2
        attrs = [(d.USER_NAME, self.cards[session % len(self.cards)].encode()),
                 (d.NAS_IP_ADDRESS, bytes([192, 0, 2, 30])),
                 (d.ACCT_STATUS_TYPE, (2 if stop else 1).to_bytes(4, "big")),
                 (d.ACCT_SESSION_ID, f"gen-{self.run_tag}-{session}".encode()),
                 (d.CALLED_STATION_ID, CALLED)]
        if stop:
            attrs.append((d.ACCT_SESSION_TIME, (30).to_bytes(4, "big")))
        return packet.encode_accounting_request(ident, attrs, self.secret)

    def run(self, until: Callable[[float], bool], on_tick: Callable[[float], None] | None = None) -> None:
        """Send and receive until `until(now)` is true; `on_tick(now)` runs about every 10 ms."""
        if not self.t0:
            self.t0 = _mono()
        nsock = len(self.net.socks)
        while True:
            now = _mono()
            if until(now):
                return
            if on_tick is not None:
                on_tick(now)
            sent = 0
            while self.t0 + self.k * self.interval <= now and sent < 64:
                due = self.t0 + self.k * self.interval
                s = (self.k // 2) % nsock
                ident = self.ident[s]
                self.ident[s] = (ident + 1) & 0xFF
                data = self._packet(self.k, ident)
                old = self.pending.pop((s, ident), None)
                if old is not None:
                    self.lost.append(old[1])
                t = _mono()
                self.net.socks[s].sendto(data, ("127.0.0.1", self.port))
                self.pending[(s, ident)] = (due, t)
                self.k += 1
                sent += 1
            wait = max(0.0, min(0.01, self.t0 + self.k * self.interval - _mono()))
            self._receive(wait)

    def _receive(self, timeout: float) -> None:
        for s, data, t in self.net.receive(timeout):
            entry = self.pending.pop((s, data[1]), None) if len(data) >= 20 else None
            if entry is None or data[0] != 5:  # 5 = Accounting-Response
                self.bad += 1
                continue
            self.samples.append((entry[0], entry[1], t - entry[1]))

    def drain(self, seconds: float = 2.0) -> None:
        deadline = _mono() + seconds
        while self.pending and _mono() < deadline:
            self._receive(0.05)
        self.lost.extend(sent for _, sent in self.pending.values())
        self.pending.clear()

    def close(self) -> None:
        self.net.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        lat = [lat for _, sent, lat in self.samples if start <= sent < end]
        late = [sent - due for due, sent, _ in self.samples if start <= sent < end]
        out = dist_ms(lat)
        out["seconds"] = round(end - start, 2)
        out["lost"] = sum(1 for t in self.lost if start <= t < end)
        out["client_late_p99_ms"] = _ms(percentile(late, 99))
        return out


class AuthLoad:
    """Closed loop: `window` outstanding card authentications (User-Name + PIN + Message-Authenticator),
    one per source port; each reply sends the next. Records each reply's time and code."""

    def __init__(self, port: int, *, cards: dict[str, str], window: int = 8, timeout: float = 1.0):
        self.port = port
        self.net = _Sockets(window)
        self.cards = list(cards.items())
        self.secret = SECRET.encode()
        self.timeout = timeout
        self.ident = [0] * window
        self.out: list[tuple[int, float] | None] = [None] * window  # per socket: (ident, sent)
        self.replies: list[tuple[float, int, float]] = []           # (recv time, code, latency)
        self.timeouts: list[float] = []
        self.n = 0

    def _send(self, s: int) -> None:
        from radcore import dictionary as d
        from radcore import packet
        number, pin = self.cards[self.n % len(self.cards)]
        self.n += 1
        ident = self.ident[s]
        self.ident[s] = (ident + 1) & 0xFF
        data = packet.encode_access_request(ident, os.urandom(16), [(d.USER_NAME, number.encode())],
                                            self.secret, password=pin.encode())
        self.net.socks[s].sendto(data, ("127.0.0.1", self.port))
        self.out[s] = (ident, _mono())

    def run(self, until: Callable[[float], bool], on_tick: Callable[[float], None] | None = None) -> None:
        for s, slot in enumerate(self.out):
            if slot is None:
                self._send(s)
        while True:
            now = _mono()
            if until(now):
                return
            if on_tick is not None:
                on_tick(now)
            for s, data, t in self.net.receive(0.01):
                slot = self.out[s]
                if slot is None or len(data) < 20 or data[1] != slot[0]:
                    continue
                self.replies.append((t, data[0], t - slot[1]))
                self._send(s)
            now = _mono()
            for s, slot in enumerate(self.out):
                if slot is not None and now - slot[1] > self.timeout:
                    self.timeouts.append(slot[1])
                    self._send(s)

    def close(self) -> None:
        self.net.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        got = [(code, lat) for t, code, lat in self.replies if start <= t < end]
        seconds = end - start
        out = {"seconds": round(seconds, 2), "replies": len(got),
               "per_s": round(len(got) / seconds, 1) if seconds > 0 else None,
               "accepts": sum(1 for code, _ in got if code == 2),
               "timeouts": sum(1 for t in self.timeouts if start <= t < end)}
        out.update({f"latency_{k}": v for k, v in dist_ms([lat for _, lat in got]).items()
                    if k in ("p50_ms", "p99_ms", "max_ms")})
        return out


def _overlap_split(samples: list[tuple[float, float, float]], log: list[list[float]], start: float,
                   end: float) -> dict[str, Any]:
    """Split the during-generation accounting samples by whether the request was in flight while the
    generator held the writer lock (lock acquired .. commit returned) - the direct evidence."""
    holds = sorted((t1, t3) for _, t1, _, t3 in log)
    starts = [h[0] for h in holds]
    hit, miss = [], []
    for _, sent, lat in samples:
        if not start <= sent < end:
            continue
        i = bisect.bisect_right(starts, sent + lat) - 1   # last hold starting before the reply
        overlapped = i >= 0 and holds[i][1] > sent
        (hit if overlapped else miss).append(lat)
    return {"overlapping_hold": dist_ms(hit), "not_overlapping": dist_ms(miss)}


def latency_run(workdir: Path, *, mode: str, cards: int, chunk_size: int, variant: str,
                pause_factor: float = 0.0, pin_run: int = 0, nice: int = 0, code: str = "current",
                head_path: str | None = None, rate: float,
                idle_seconds: float, workers: int, after_seconds: float = 5.0, say: Callable[[str], None] = print,
                keep_raw: bool = False) -> dict[str, Any]:
    """One server lifetime: provision, start, warm up 1 s, measure idle, then measure during one
    generation of `cards` cards in a child process, then idle again for `after_seconds` (a check on
    how much the machine's background load drifted). `variant`: "same" (the server's data dir, sync on),
    "nosync" (same dir, generator with sync off), "other" (a different data dir: no shared lock)."""
    load_before = list(os.getloadavg())
    run_dir = Path(tempfile.mkdtemp(prefix=f"lat-{mode}-", dir=workdir))
    data = run_dir / "var"
    try:
        pins = provision_base(str(data), sync=False)
        config = write_server_config(run_dir, data, workers=workers)
        gen_path = data if variant != "other" else run_dir / "other"
        if variant == "other":
            provision_base(str(gen_path), cards=0, sync=False)
        spec = {"task": "generate", "path": str(gen_path), "series": GEN_SERIES, "cards": cards,
                "chunk_size": chunk_size, "sync": variant != "nosync", "keep_txn_log": True,
                "pause_factor": pause_factor, "pin_run": pin_run, "nice": nice, "code": code,
                "head_path": head_path,
                "store_stats": False}
        with Server(config) as server:
            if mode == "acct":
                load: AcctLoad | AuthLoad = AcctLoad(server.ready["acct_port"], rate=rate, cards=list(pins))
            else:
                load = AuthLoad(server.ready["auth_port"], cards=pins)
            child: Child | None = None
            try:
                t_start = _mono()
                idle_from, idle_to = t_start + 1.0, t_start + 1.0 + idle_seconds
                load.run(lambda now: now >= idle_to)
                child = Child(spec, run_dir)
                load.run(lambda now: child.poll())
                t_after = _mono()
                after_from, after_to = t_after + 0.5, t_after + 0.5 + after_seconds
                load.run(lambda now: now >= after_to)
                if isinstance(load, AcctLoad):
                    load.drain()
                gen = child.result()
            finally:
                if child is not None:
                    child.kill()
                load.close()
            server_log_tail = server.log()[-2000:]
        log = gen.pop("txn_log")
        # The window runs from the first chunk's transaction (log[0] only creates the series record)
        # to the last commit.
        g0, g1 = log[min(1, len(log) - 1)][0], log[-1][3]
        result: dict[str, Any] = {"mode": mode, "variant": variant, "chunk_size": gen["chunk_size"],
                                  "pause_factor": pause_factor, "pin_run": pin_run, "nice": nice, "code": code,
                                  "cards": cards, "workers": workers,
                                  "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                                  "generation": gen}
        if isinstance(load, AcctLoad):
            idle, during = load.window(idle_from, idle_to), load.window(g0, g1)
            result.update({"rate": rate, "idle": idle, "during": during, "bad_replies": load.bad,
                           "idle_after": load.window(after_from, after_to),
                           "overlap": _overlap_split(load.samples, log, g0, g1)})
            ratio = (during["p99_ms"] / idle["p99_ms"]) if during["p99_ms"] and idle["p99_ms"] else None
            result["p99_ratio"] = round(ratio, 2) if ratio else None
            result["meets_target"] = ratio is not None and ratio <= TARGET_RATIO
            say(f"  acct {gen_label(result)} chunk {gen['chunk_size']}: idle p50/p99/max {idle['p50_ms']}/"
                f"{idle['p99_ms']}/{idle['max_ms']} ms, during {during['p50_ms']}/{during['p99_ms']}/"
                f"{during['max_ms']} ms (n={during['count']}, lost {during['lost']}), after p99 "
                f"{result['idle_after']['p99_ms']} ms, ratio {result['p99_ratio']}; gen {gen['wall_s']} s, "
                f"hold p50/p99/max {gen['txn']['hold']['p50_ms']}/{gen['txn']['hold']['p99_ms']}/"
                f"{gen['txn']['hold']['max_ms']} ms, held {gen['txn']['held_fraction']}, "
                f"{gen['written_bytes_per_card']} B written/card")
            if keep_raw:
                result["raw"] = {"t0": load.t0, "gen_window": [g0, g1],
                                 "samples": [(round(s - load.t0, 4), round(lat * 1000, 3))
                                             for _, s, lat in load.samples],
                                 "holds": [(round(t1 - load.t0, 4), round((t3 - t1) * 1000, 3))
                                           for _, t1, _, t3 in log]}
        else:
            idle, during = load.window(idle_from, idle_to), load.window(g0, g1)
            result.update({"window": 8, "idle": idle, "during": during,
                           "idle_after": load.window(after_from, after_to),
                           "throughput_ratio": round(during["per_s"] / idle["per_s"], 2)
                           if idle["per_s"] and during["per_s"] is not None else None})
            say(f"  auth {gen_label(result)} chunk {gen['chunk_size']}: idle {idle['per_s']}/s "
                f"(p99 {idle['latency_p99_ms']} ms), "
                f"during {during['per_s']}/s (p99 {during['latency_p99_ms']} ms), accepts "
                f"{idle['accepts']}+{during['accepts']}; gen {gen['wall_s']} s")
        if "Traceback" in server_log_tail:
            result["server_log_tail"] = server_log_tail
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Report

def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), _row(*(["---"] * len(names)))]


_SOURCE_TAGS: dict[str, str] = {}


def _run_id(r: dict[str, Any]) -> str:
    src = r.get("source", "this run")
    return str(r["rep"]) if src == "this run" else f"{r['rep']} ({_SOURCE_TAGS.get(src, 'merged')})"


def _triple(d: dict[str, Any], digits: int = 2) -> str:
    return f"{_fmt(d['p50_ms'], digits)} / {_fmt(d['p99_ms'], digits)} / {_fmt(d['max_ms'], 1)}"


_LABELS = {"same": "same store", "nosync": "same store, generator sync off",
           "other": "other store (no shared lock)"}


def gen_label(r: dict[str, Any]) -> str:
    code = "baseline generation.py" if r.get("code") == "head" else "working-tree generation.py"
    run = f", PIN_RUN {r['pin_run']:,}" if r.get("pin_run") else ""
    pause = f", paced x{r['pause_factor']:g}" if r.get("pause_factor") else ""
    nice = f", nice {r['nice']}" if r.get("nice") else ""
    return f"{code}: {_LABELS.get(r['variant'], r['variant'])}{run}{pause}{nice}"


def pooled_idle_p99(runs: list[dict[str, Any]]) -> float | None:
    """Median over accounting runs of one invocation of the idle p99 before *and* after each
    generation: a baseline that one background-load spike in one idle window cannot move much."""
    values = [r[k]["p99_ms"] for r in runs if r["mode"] == "acct"
              for k in ("idle", "idle_after") if r.get(k, {}).get("p99_ms")]
    return percentile(values, 50)


def annotate(doc: dict[str, Any]) -> None:
    """Add the ratio of each run's during-generation p99 to the pooled idle p99 of its invocation."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in doc.get("latency", []):
        by_source.setdefault(r.get("source", "this run"), []).append(r)
    doc["pooled_idle_p99_ms"] = {src: pooled_idle_p99(runs) for src, runs in by_source.items()}
    for src, runs in by_source.items():
        pooled = doc["pooled_idle_p99_ms"][src]
        for r in runs:
            if r["mode"] == "acct" and pooled and r["during"]["p99_ms"]:
                r["p99_ratio_pooled"] = round(r["during"]["p99_ms"] / pooled, 2)
                r["meets_target_pooled"] = r["p99_ratio_pooled"] <= TARGET_RATIO


def _runs_sentence(doc: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in doc.get("latency", []):
        key = f"{r['mode']}|{gen_label(r)}|{r['chunk_size']}"
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return f"every measurement ran {doc['params']['repeat']} times"
    low, high = min(counts.values()), max(counts.values())
    return f"each RADIUS configuration ran {low} times" if low == high else \
        f"each RADIUS configuration ran {low} to {high} times"


def markdown(doc: dict[str, Any]) -> str:
    annotate(doc)
    m, p = doc["machine"], doc["params"]
    sources = []
    for item in doc.get("exports", []) + doc.get("generation", []) + doc.get("latency", []):
        src = item.get("source", "this run")
        if src != "this run" and src not in sources:
            sources.append(src)
    _SOURCE_TAGS.clear()
    _SOURCE_TAGS.update({src: chr(ord("A") + i) for i, src in enumerate(sources)})
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    lines = ["# Card generation, export, and RADIUS during generation", "", f"`{doc['command']}`", "",
             (f"{m['date']} on {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, lmdb "
              f"{m.get('lmdb')}, openpyxl {m.get('openpyxl')}; load average at start {load}. Shared, noisy "
              f"machine: {_runs_sentence(doc)}, all runs shown."), ""]
    code = doc.get("generation_code") or {}
    if code:
        head = code.get("head") or {}
        origin = (f"the copy in `{head['commit'][5:]}`" if str(head.get("commit", "")).startswith("file ") else
                  f"as committed at {(head.get('commit') or '?')[:10]} (`--baseline-rev {code.get('baseline_rev', 'HEAD')}`)")
        lines += [(f"radcore/generation.py: working tree sha256 {code.get('current_sha256')}; baseline = {origin}, "
                   f"sha256 {head.get('sha256')}"
                   + (" (differs from the working tree: both are measured, labelled per row)"
                      if code.get("current_differs_from_head") else "")), ""]
    gens = doc.get("generation") or [dict(r["generation"], rep=r["rep"]) for r in doc.get("generation_export", [])]
    if gens:
        lines += [f"## Generating {p['cards']:,} cards (durable store: sync and metasync on)", ""]
        lines += _header("generation.py", "chunk_size", "run", "wall s", "cards/s", "peak RSS MiB (anon / file-backed)",
                         "data.mdb bytes", "bytes/card on disk", "LMDB written B/card", "write txns",
                         "lock hold p50 / p99 / max ms", "commit (fsync) p99 ms")
        for g in gens:
            mem = g["memory"]
            lines.append(_row("baseline" if g.get("code") == "head" else "working tree", _fmt(g["chunk_size"]), _run_id(g),
                              _fmt(g["wall_s"]), _fmt(g["cards_per_s"]),
                              f"{_fmt(mem['peak_rss_mib'])} ({_fmt(mem['peak_anon_mib'])} / "
                              f"{_fmt(mem['peak_file_mib'])})", _fmt(g["data_mdb_bytes"]),
                              _fmt(g["bytes_per_card_file"]), _fmt(g.get("written_bytes_per_card")),
                              _fmt(g["txn"]["count"]), _triple(g["txn"]["hold"], 1),
                              _fmt(g["txn"]["commit"]["p99_ms"])))
    exports = doc.get("exports") or [dict(e, rep=r["rep"]) for r in doc.get("generation_export", [])
                                     for e in r["exports"]]
    if exports:
        lines += ["", "## Exporting cards (admin, chunks written to a file)", ""]
        lines += _header("run", "format", "rows", "wall s", "rows/s", "peak RSS MiB", "of which anon / file-backed",
                         "RSS before export MiB", "file bytes")
        for e in exports:
            mem = e["memory"]
            lines.append(_row(_run_id(e), e["fmt"] + (" (openpyxl on lxml)" if e["lxml"] else ""), _fmt(e["rows"]),
                              _fmt(e["wall_s"]), _fmt(e["rows_per_s"]), _fmt(mem["peak_rss_mib"]),
                              f"{_fmt(mem['peak_anon_mib'])} / {_fmt(mem['peak_file_mib'])}",
                              _fmt(mem["start_rss_mib"]), _fmt(e["file_bytes"])))
    acct = [r for r in doc.get("latency", []) if r["mode"] == "acct"]
    if acct:
        lines += ["", (f"## Accounting latency while {p['latency_cards']:,} cards are generated ({p['rate']:.0f} "
                       f"req/s Start/Stop, {p['workers']} workers, target: p99 during <= {TARGET_RATIO:g} x idle)"), ""]
        pooled = doc.get("pooled_idle_p99_ms") or {}
        pooled_text = "; ".join(f"{_fmt(v, 2)} ms ({'this run' if k == 'this run' else _SOURCE_TAGS.get(k, k)})"
                                for k, v in pooled.items())
        lines += [(f"Ratio = p99 during generation / p99 idle of the same run (10 s before it). Because one "
                   f"background-load spike in a 10 s idle window can fake a pass, the second ratio divides by "
                   f"the pooled idle p99 of the invocation instead (median of every run's idle-before and "
                   f"idle-after p99: {pooled_text}). A configuration meets the target only if it passes on "
                   f"both in every run."), ""]
        lines += _header("generator", "chunk_size", "runs", "during p99 ms per run", "p99 ratio per run (own idle)",
                         "p99 ratio per run (pooled idle)", "meets 3x", "gen lock hold p50 / p99 ms per run",
                         "LMDB written B/card", "gen wall s per run")
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(acct, key=lambda r: (r.get("code") != "head", r["variant"], r["chunk_size"])):
            groups.setdefault(f"{gen_label(r)}|{r['chunk_size']}", []).append(r)
        for key, rs in groups.items():
            name, chunk = key.rsplit("|", 1)
            met = sum(bool(r["meets_target"] and r.get("meets_target_pooled")) for r in rs)
            lines.append(_row(name, _fmt(int(chunk)), len(rs), " / ".join(_fmt(r["during"]["p99_ms"]) for r in rs),
                              " / ".join(_fmt(r["p99_ratio"], 2) for r in rs),
                              " / ".join(_fmt(r.get("p99_ratio_pooled"), 2) for r in rs),
                              f"{met} of {len(rs)}",
                              " ; ".join(f"{_fmt(r['generation']['txn']['hold']['p50_ms'], 1)} / "
                                         f"{_fmt(r['generation']['txn']['hold']['p99_ms'], 1)}" for r in rs),
                              " / ".join(_fmt(r["generation"].get("written_bytes_per_card")) for r in rs),
                              " / ".join(_fmt(r["generation"]["wall_s"]) for r in rs)))
        lines += ["", "All runs:", ""]
        lines += _header("generator", "chunk_size", "run", "idle p50 / p99 / max ms", "during p50 / p99 / max ms",
                         "n during", "lost", "**p99 ratio**", "meets 3x", "idle-after p99 ms", "gen wall s",
                         "gen lock hold p50 / p99 / max ms", "lock held %", "LMDB written B/card",
                         "p99 in flight during a hold / not")
        for r in acct:
            i, d_, g = r["idle"], r["during"], r["generation"]
            held = g["txn"]["held_fraction"]
            ov = r["overlap"]
            lines.append(_row(gen_label(r), _fmt(r["chunk_size"]), _run_id(r), _triple(i), _triple(d_),
                              _fmt(d_["count"]), _fmt(d_["lost"] + i["lost"]), f"**{_fmt(r['p99_ratio'], 2)}**",
                              "yes" if r["meets_target"] else "NO",
                              _fmt(r.get("idle_after", {}).get("p99_ms"), 2), _fmt(g["wall_s"]),
                              _triple(g["txn"]["hold"]), _fmt(100 * held if held is not None else None, 0),
                              _fmt(g.get("written_bytes_per_card")),
                              f"{_fmt(ov['overlapping_hold']['p99_ms'], 2)} / "
                              f"{_fmt(ov['not_overlapping']['p99_ms'], 2)}"))
    auth = [r for r in doc.get("latency", []) if r["mode"] == "auth"]
    if auth:
        lines += ["", "## Card authentication throughput while generating (closed loop, 8 outstanding)", ""]
        lines += _header("generator", "chunk_size", "run", "idle req/s", "during req/s", "**ratio**",
                         "idle-after req/s", "idle p99 ms", "during p99 ms", "accepts", "timeouts", "gen wall s")
        for r in auth:
            i, d_ = r["idle"], r["during"]
            lines.append(_row(gen_label(r), _fmt(r["chunk_size"]), _run_id(r), _fmt(i["per_s"]), _fmt(d_["per_s"]),
                              f"**{_fmt(r['throughput_ratio'], 2)}**", _fmt(r.get("idle_after", {}).get("per_s")),
                              _fmt(i["latency_p99_ms"], 2), _fmt(d_["latency_p99_ms"], 2),
                              f"{_fmt(i['accepts'] + d_['accepts'])} of {_fmt(i['replies'] + d_['replies'])}",
                              _fmt(i["timeouts"] + d_["timeouts"]), _fmt(r["generation"]["wall_s"])))
    if _SOURCE_TAGS:
        lines += ["", "## Invocations merged into this report", ""]
        lines += [f"- **{tag}**: `{src}`" for src, tag in _SOURCE_TAGS.items()]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Entry point

VARIANTS = ("same", "nosync", "other")


def _parse_configs(text: str) -> list[dict[str, Any]]:
    """"same,same:2000:head,nosync:2000:head,same:0:r1000000:n10" -> [{"variant", "chunk_size",
    "pause_factor", "pin_run", "nice", "code"}, ...]: VARIANT[:CHUNK[:pFACTOR][:rPIN_RUN][:nNICE][:head]],
    CHUNK empty or 0 = generate_series' own default."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        variant, *rest = item.split(":")
        if variant not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown generator variant {variant!r} (one of {VARIANTS})")
        config = {"variant": variant, "chunk_size": int(rest[0]) if rest and rest[0] else 0,
                  "pause_factor": 0.0, "pin_run": 0, "nice": 0, "code": "current"}
        for token in rest[1:]:
            if token == "head":
                config["code"] = "head"
            elif token.startswith("p"):
                config["pause_factor"] = float(token[1:])
            elif token.startswith("n"):
                config["nice"] = int(token[1:])
            elif token.startswith("r"):
                config["pin_run"] = int(token[1:])
            else:
                raise argparse.ArgumentTypeError(f"bad option {token!r} in {item!r}")
        if config["code"] == "head" and config["pin_run"]:
            raise argparse.ArgumentTypeError(f"{item!r}: PIN_RUN applies to the working-tree code only")
        out.append(config)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_generation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=1_000_000, help="cards per generation (all sections)")
    parser.add_argument("--small", type=int, default=100_000,
                        help="second export size, for the constant-memory comparison (0 = skip)")
    parser.add_argument("--out", default=str(RESULTS / "generation.json"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=0,
                        help="section 1-2 chunk size (0 = generate_series' default)")
    parser.add_argument("--gen-codes", default="current,head",
                        help="section 1 (--sections gen) runs: current (working tree) and/or head (baseline)")
    parser.add_argument("--baseline-rev", default="HEAD",
                        help="git revision whose radcore/generation.py the `head` configurations run")
    parser.add_argument("--baseline-file", metavar="PY",
                        help="run the `head` configurations on this copy of radcore/generation.py instead "
                             "(no git needed; labelled by its sha256)")
    parser.add_argument("--first-rep", type=int, default=1, help="number of the first repetition (labels only)")
    parser.add_argument("--configs", type=_parse_configs,
                        default=_parse_configs("same:2000:head,same:200:head,same:10000:head,same:2000:p3:head,"
                                               "nosync:2000:head,other:2000:head,"
                                               "same,same:2000,same:10000,same:0:r1000000,same:0:n10,other"),
                        help="accounting runs as VARIANT[:CHUNK[:pPAUSE][:rPIN_RUN][:nNICE][:head]],...; VARIANT "
                             "is same, nosync (generator sync off) or other (another data dir); CHUNK 0 or "
                             "empty = the code's default; pPAUSE sleeps PAUSE x the last lock hold after each "
                             "chunk; rN sets generation.PIN_RUN; nN runs the generator at nice N; head uses "
                             "radcore/generation.py as committed at git HEAD")
    parser.add_argument("--auth-configs", type=_parse_configs, default=_parse_configs("same:2000:head,same"),
                        help="card-auth throughput runs, same syntax ('' = skip)")
    parser.add_argument("--rate", type=float, default=400.0, help="accounting requests per second")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lxml-path", help="a directory with lxml (pip install --target DIR lxml) to also "
                                            "run the small XLSX export with openpyxl on lxml")
    parser.add_argument("--sections", default="gen,export,acct,auth",
                        help="comma list of: gen (section 1), export (section 2, on a fresh generation), acct, auth")
    parser.add_argument("--merge-exports", metavar="JSON",
                        help="take section 2 (exports) from an earlier result instead of running it again")
    parser.add_argument("--merge-latency", metavar="JSON", action="append", default=[],
                        help="add the accounting/auth runs of an earlier result (labelled; pooled idle is per "
                             "invocation); repeatable")
    parser.add_argument("--workdir", help="where temp stores go (default: the system temp dir)")
    parser.add_argument("--raw", action="store_true", help="also write per-request samples to OUT.raw.json")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the Markdown beside an existing JSON result")
    parser.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.render:
        src = Path(args.render)
        doc = json.loads(src.read_text())
        text = markdown(doc)
        src.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        src.with_suffix(".md").write_text(text)
        return 0

    sections = set(filter(None, args.sections.split(",")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="radcore-bench-gen-", dir=args.workdir))
    # git (read-only rev-parse/show) runs only when some configuration measures the baseline.
    wants_head = (("gen" in sections and "head" in args.gen_codes.split(","))
                  or any(c["code"] == "head" for c in (args.configs if "acct" in sections else [])
                         + (args.auth_configs if "auth" in sections else [])))
    head = None
    if wants_head and args.baseline_file:
        source = Path(args.baseline_file).read_bytes()
        (workdir / "generation_head.py").write_bytes(source)
        head = {"path": str(workdir / "generation_head.py"), "commit": f"file {args.baseline_file}",
                "sha256": hashlib.sha256(source).hexdigest()[:16]}
    elif wants_head:
        head = head_generation_source(workdir / "generation_head.py", args.baseline_rev)
    from radcore import generation as _current
    current_sha = hashlib.sha256(Path(_current.__file__).read_bytes()).hexdigest()[:16]
    doc: dict[str, Any] = {
        "command": "python -m bench.bench_generation " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "generation_code": {"current_sha256": current_sha, "head": head, "baseline_rev": args.baseline_rev,
                            "current_differs_from_head": bool(head and head["sha256"] != current_sha)},
        "params": {"cards": args.cards, "small": args.small, "repeat": args.repeat, "chunk_size": args.chunk_size,
                   "latency_cards": args.cards, "rate": args.rate, "idle_seconds": args.idle_seconds,
                   "workers": args.workers, "base_cards": BASE_CARDS, "map_size_mb": MAP_SIZE_MB,
                   "configs": args.configs, "auth_configs": args.auth_configs},
        "generation": [], "exports": [], "latency": [], "notes": list(args.note)}
    if args.merge_exports:
        earlier = json.loads(Path(args.merge_exports).read_text())
        source = f"{earlier['command']} ({earlier['machine']['date']})"
        for rep_doc in earlier.get("generation_export", []):
            doc["exports"] += [dict(e, rep=rep_doc["rep"], source=source) for e in rep_doc["exports"]]
        doc["exports"] += [dict(e, source=e.get("source", source)) for e in earlier.get("exports", [])]
    for path in args.merge_latency:
        earlier = json.loads(Path(path).read_text())
        source = f"{earlier['command']} ({earlier['machine']['date']})"
        doc["latency"] += [dict(r, source=r.get("source") if r.get("source", "this run") != "this run" else source)
                           for r in earlier.get("latency", [])]
        doc["generation"] += [dict(g, source=g.get("source", source)) for g in earlier.get("generation", [])]

    def say(text: str) -> None:
        print(text, flush=True)

    raw: list[dict[str, Any]] = []

    def save() -> None:
        doc["machine"]["loadavg_end"] = list(os.getloadavg())
        for r in doc["latency"]:
            if "raw" in r:
                raw.append({"label": gen_label(r), "mode": r["mode"], "chunk_size": r["chunk_size"],
                            "rep": r["rep"], **r.pop("raw")})
        text = markdown(doc)  # also annotates doc with the pooled-idle ratios
        out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        out.with_suffix(".md").write_text(text)
        if raw:
            out.with_suffix(".raw.json").write_text(json.dumps(raw))

    def check_code() -> None:
        sha = hashlib.sha256(Path(_current.__file__).read_bytes()).hexdigest()[:16]
        if sha != current_sha:
            note = (f"radcore/generation.py changed during this run (sha256 {current_sha} -> {sha}); "
                    "see each generation's generation_sha256")
            if note not in doc["notes"]:
                doc["notes"].append(note)
                say("WARNING: " + note)

    try:
        for rep in range(args.first_rep, args.first_rep + args.repeat):
            if "gen" in sections:
                for code in filter(None, args.gen_codes.split(",")):
                    if code == "head" and not head:
                        continue
                    say(f"[{rep}] generation, {code} generation.py")
                    d = Path(tempfile.mkdtemp(prefix="gen-", dir=workdir))
                    res = bench_generation(d, cards=args.cards, chunk_size=args.chunk_size, code=code,
                                           head_path=head["path"] if head else None, say=say)
                    doc["generation"].append(dict(res, rep=rep))
                    shutil.rmtree(d, ignore_errors=True)
                    check_code()
                    save()
            if "export" in sections:
                say(f"[{rep}] generation and export")
                d = Path(tempfile.mkdtemp(prefix="genexp-", dir=workdir))
                res = bench_generation_and_export(d, cards=args.cards, small=args.small,
                                                  chunk_size=args.chunk_size, lxml_path=args.lxml_path, say=say)
                doc["generation"].append(dict(res["generation"], rep=rep))
                doc["exports"] += [dict(e, rep=rep, source="this run") for e in res["exports"]]
                shutil.rmtree(d, ignore_errors=True)
                check_code()
                save()
            runs = ([("acct", c) for c in args.configs] if "acct" in sections else []) + \
                   ([("auth", c) for c in args.auth_configs] if "auth" in sections else [])
            for mode, c in runs:
                say(f"[{rep}] {mode}, generator {c}")
                if c["code"] == "head" and not head:
                    say("  skipped: no git HEAD copy of radcore/generation.py")
                    continue
                res = latency_run(workdir, mode=mode, cards=args.cards, chunk_size=c["chunk_size"],
                                  variant=c["variant"], pause_factor=c["pause_factor"], pin_run=c["pin_run"],
                                  nice=c["nice"], code=c["code"], head_path=head["path"] if head else None,
                                  rate=args.rate, idle_seconds=args.idle_seconds, workers=args.workers,
                                  say=say, keep_raw=args.raw)
                res["rep"] = rep
                doc["latency"].append(res)
                check_code()
                save()
    finally:
        save()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
