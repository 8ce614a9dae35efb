"""Child processes: every figure with a memory claim, and every generator racing the server, runs in
its own interpreter (`python -m bench.bench_generation --child SPEC.json`). `Child` starts one and
reaps it; `child_main` is what runs inside it (`child_generate`, `child_export`), and
`provision_base` prepares the stores they and the server use."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.generation_stats import MemorySampler, dist_ms, mono
from bench.procs import python_env

ROOT = Path(__file__).resolve().parent.parent

BASE_SERIES = 45
BASE_CARDS = 1_000
GEN_SERIES = 46            # the big series generated while the server runs / in section 1
SMALL_SERIES = 47          # the 100,000-card series for the constant-memory export check
PIN_LENGTH = 10
FACE_BALANCE = 1_000_000 * 1_000_000
MAP_SIZE_MB = 8192         # server.map_size_mb; every process opening a store uses the same


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
        deadline = mono() + timeout
        while not self.poll():
            if mono() > deadline:
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
        t0 = mono()
        txn = store.begin(write=True)
        t1 = mono()
        try:
            yield txn
        except BaseException:
            txn.abort()
            raise
        t2 = mono()
        try:
            txn.commit()
        except Exception as e:  # lmdb.Error, as Store.transaction would translate it
            raise store.error(e) from e
        log.append((t0, t1, t2, mono()))

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
            t0 = mono()
            series = g.generate_series(store, keyring, Series(
                number=spec["series"], name=f"bench-{spec['series']}", face_balance=10_000_000,
                quantity=spec["cards"], pin_length=PIN_LENGTH, rate_table="retail",
                initial_status=CardStatus.ACTIVATED), clock=system_clock, progress=progress, **chunk_kw)
            t1 = mono()
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
            t0 = mono()
            for event in export_cards(store, keyring, LOCAL, CardFilter(series=spec["series"]),
                                      fmt=spec["fmt"], clock=system_clock):
                if isinstance(event, Chunk):
                    if first_chunk is None:
                        first_chunk = mono() - t0
                    out.write(event.data)
                    chunks += 1
                elif isinstance(event, Finished):
                    finished = event
                elif not isinstance(event, (Rows, Started)):
                    raise TypeError(f"unexpected export event {event!r}")
            t1 = mono()
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
