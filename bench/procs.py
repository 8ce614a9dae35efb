"""Starting and stopping the servers a benchmark runs: pinned, logged to a file, never left running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def python_env(*extra_paths: str) -> dict[str, str]:
    """This environment with the checkout (and `extra_paths`) first on PYTHONPATH, so a child
    `python -m ...` runs the code under test whatever the current directory."""
    env = dict(os.environ)
    parts = [str(ROOT), *extra_paths] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def launch(args: Sequence[str], log_path: str | os.PathLike, *, cpus: str | None = None,
           cwd: str | os.PathLike | None = None,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, IO[bytes]]:
    """Start `args` (under `taskset -c cpus` when given) with stdout and stderr in `log_path`.

    Returns the process and the open log file, which the caller closes once the process is gone.
    """
    if cpus:
        args = ["taskset", "-c", cpus, *args]
    log = open(log_path, "wb")  # noqa: SIM115 (the child's stdout until the caller stops it)
    proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=env)
    return proc, log


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], *, what: str, timeout: float,
               log: Callable[[], str], stop: Callable[[], None]) -> None:
    """Poll `ready()` until it holds; if `proc` exits first, or `timeout` passes (then `stop()` is
    called), raise with the tail of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()[-3000:]}")
        time.sleep(0.05)
    stop()
    raise TimeoutError(f"{what} not ready after {timeout} s:\n{log()[-3000:]}")


def terminate(proc: subprocess.Popen, grace: float = 10.0,
              before_kill: Callable[[], None] | None = None) -> None:
    """SIGTERM, wait `grace` seconds, then SIGKILL (after `before_kill`, e.g. to kill workers the
    process forked, which a SIGKILLed parent can no longer stop)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        if before_kill is not None:
            before_kill()
        proc.kill()
        proc.wait(5)
