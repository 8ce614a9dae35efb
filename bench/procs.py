"""Stopping the servers a benchmark starts: by PID, politely first, never left running."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable


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
