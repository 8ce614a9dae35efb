"""The three servers `bench/compare` and `bench/scale` drive, each started on a fresh copy of the
provisioned data and stopped by PID: radcore (durable, or on tmpfs for the diagnostic), the pyrad
baseline (`bench.pyrad_server`) and FreeRADIUS 3.2 (`bench.freeradius`).

Each has `start()`, `stop()`, `auth`/`acct` addresses, `info()` for the report and `counters()`
(radcore's replies and batches from /metrics, for the average batch size of a run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.freeradius import FreeRadius, build_config, free_port
from bench.procs import launch, python_env, terminate, wait_ready
from bench.provision import copy_store
from radcore.config import ServerConfig

SECRET = "bench-secret-2f6c1e9a07d4b358"


def _peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RadcoreServer:
    """`python -m radcore.supervisor` with the prepaid handler on a fresh copy of the store.

    (`radcore serve` runs the same supervisor; calling it directly keeps the control plane out of
    the measurement.)
    """

    name = "radcore"

    def __init__(self, work: Path, manifest: dict, *, workers: int = 1, cpus: str | None = None,
                 batch_max: int | None = None, label: str | None = None, data_root: str | None = None,
                 checkpoint_ms: int = ServerConfig().checkpoint_ms):
        self.dir = work / (label or f"radcore-{workers}w")
        # The store lives in `data_root` when given (tmpfs for the radcore-shm diagnostic), else in dir/var.
        self.data = (Path(tempfile.mkdtemp(prefix="radcore-bench-", dir=data_root)) / "var"
                     if data_root else self.dir / "var")
        self.data_root = data_root
        self.manifest = manifest
        self.workers = workers
        self.cpus = cpus
        self.batch_max = batch_max
        self.checkpoint_ms = checkpoint_ms
        self.label = label or self.name
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def config_text(self) -> str:
        lines = ["[server]", f'data_dir = "{self.data}"', f"workers = {self.workers}",
                 'auth_listen = "127.0.0.1:0"', 'acct_listen = "127.0.0.1:0"',
                 'metrics_listen = "127.0.0.1:0"', 'log_level = "warning"',
                 f"map_size_mb = {self.manifest['map_size'] >> 20}"]
        if self.batch_max:
            lines.append(f"batch_max = {self.batch_max}")
        lines.append(f"checkpoint_ms = {self.checkpoint_ms}")
        lines += ["", "[prepaid]", "max_call_seconds = 3600", "",
                  "[[clients]]", 'name = "bench"', 'network = "127.0.0.1"', f'secret = "{SECRET}"',
                  'profile = "cisco"', ""]
        return "\n".join(lines)

    def start(self, timeout: float = 60.0) -> RadcoreServer:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        copy_store(self.manifest, self.data)
        (self.dir / "radcore.toml").write_text(self.config_text())
        ready = self.dir / "ready.json"
        env = python_env()
        env.pop("RADCORE_NO_EXTENSIONS", None)
        self.proc, self._log = launch(
            [sys.executable, "-m", "radcore.supervisor", "--config", str(self.dir / "radcore.toml"),
             "--ready-file", str(ready), "--handler", "radcore.handler:make_handler"],
            self.dir / "server.log", cpus=self.cpus, cwd=self.dir, env=env)
        wait_ready(self.proc, ready.exists, what="radcore", timeout=timeout, log=self.log, stop=self.stop)
        self.ready = json.loads(ready.read_text())
        return self

    @property
    def auth(self) -> tuple[str, int]:
        return "127.0.0.1", self.ready["auth_port"]

    @property
    def acct(self) -> tuple[str, int]:
        return "127.0.0.1", self.ready["acct_port"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _kill_workers(self) -> None:
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        pid = self.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def info(self) -> dict:
        return {"workers": self.workers, "implementation": self.ready.get("implementation"),
                "cpus": self.cpus, "batch_max": self.batch_max or 256, "store": str(self.data),
                "checkpoint_ms": self.checkpoint_ms,
                "durable": self.data_root is None}

    def counters(self) -> dict[str, float]:
        """Replies, batches and journal appends so far, from /metrics (for the average batch size
        of a run and the share of its batches made durable by the journal), and the largest worker's
        peak RSS since it started (`peak_rss_mib`, VmHWM: LMDB's map pages it read
        count too, and under a journaled backlog the pages its held transaction dirtied)."""
        port = self.ready.get("metrics_port")
        if not port:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out = {"replies": 0.0, "batches": 0.0, "journal_appends": 0.0}
        for line in text.splitlines():
            if line.startswith("radcore_replies_total{"):
                out["replies"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith(("radcore_batches_total ", "radcore_journal_appends_total ")):
                out[line[len("radcore_"):line.index("_total")]] = float(line.rsplit(" ", 1)[1])
        peaks = [_peak_rss_kib(pid) for pid in self.worker_pids()]
        if any(peaks):
            out["peak_rss_mib"] = round(max(peaks) / 1024)
        return out

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def restart(self) -> RadcoreServer:
        """Stop, and start again on a fresh copy of the provisioned store."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc, 20, before_kill=self._kill_workers)
        self._log.close()
        self.proc = None
        if self.data_root:
            shutil.rmtree(self.data.parent, ignore_errors=True)


class PyradServer:
    """`python -m bench.pyrad_server` on the provisioned card list."""

    name = "pyrad"

    def __init__(self, work: Path, manifest: dict, *, cpus: str | None = None):
        self.dir = work / "pyrad"
        self.manifest = manifest
        self.cpus = cpus
        self.label = "pyrad"
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def start(self, timeout: float = 60.0) -> PyradServer:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        ready = self.dir / "ready.json"
        self.proc, self._log = launch(
            [sys.executable, "-m", "bench.pyrad_server", "--cards", self.manifest["cards_file"],
             "--secret", SECRET, "--acct-file", str(self.dir / "accounting.log"), "--ready-file", str(ready)],
            self.dir / "server.log", cpus=self.cpus, env=python_env())
        wait_ready(self.proc, ready.exists, what="pyrad server", timeout=timeout, log=self.log, stop=self.stop)
        self.ready = json.loads(ready.read_text())
        return self

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    auth = RadcoreServer.auth
    acct = RadcoreServer.acct

    def info(self) -> dict:
        import pyrad
        return {"pyrad": getattr(pyrad, "__version__", "?"), "cpus": self.cpus, "durable": False}

    def counters(self) -> dict:
        return {}

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self._log.close()
        self.proc = None


class FreeRadiusServer:
    """bench.freeradius on free ports in `work/freeradius`."""

    name = "freeradius"

    def __init__(self, work: Path, manifest: dict, *, cpus: str | None = None, threads: int = 2):
        self.dir = work / "freeradius-run"
        self.manifest = manifest
        self.cpus = cpus
        self.threads = threads
        self.label = "freeradius"
        self.server: FreeRadius | None = None

    def start(self) -> FreeRadiusServer:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        auth_port, acct_port = free_port(), free_port()
        while acct_port == auth_port:
            acct_port = free_port()
        root = build_config(self.dir, users=self.manifest["freeradius_users"], secret=SECRET,
                            auth_port=auth_port, acct_port=acct_port, threads=self.threads)
        self.server = FreeRadius(root, auth_port=auth_port, acct_port=acct_port).start(self.cpus)
        return self

    @property
    def auth(self) -> tuple[str, int]:
        return "127.0.0.1", self.server.auth_port

    @property
    def acct(self) -> tuple[str, int]:
        return "127.0.0.1", self.server.acct_port

    def info(self) -> dict:
        version = subprocess.run(["freeradius", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
        return {"version": version[0] if version else "?", "threads": self.threads, "cpus": self.cpus,
                "durable": False}

    def counters(self) -> dict:
        return {}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# ---------------------------------------------------------------------------------------------
# Runs
