"""The control process: gRPC API, fee scheduler and card-holder portal, forked by `radcore serve`.

It is one of the supervisor's children, so it opens its own LMDB environment after the fork and
shares the store with the RADIUS workers through LMDB's own locking. Its three parts run as
threads of this one process: the gRPC server's thread pool, the portal's uvicorn loop, and the
scheduler, which runs maintenance fees and expiry every `control.fee_interval_seconds` in bounded
chunks so accounting never waits long behind it. The whole process runs at a lower CPU priority
than the workers (`control.nice`), because what it does in bulk competes with them for the cores.

SIGTERM: report NOT_SERVING, let running RPCs finish (a cut-off CreateSeries rolls back, a cut-off
fee run is resumed by the next one), stop the portal, close the store.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable

from radcore.clock import default_clock
from radcore.config import Config
from radcore.generation import incomplete_generations, rollback_generation
from radcore.keys import KeyRing
from radcore.store import Store

log = logging.getLogger(__name__)


def control_process(config: Config, ready_file: str | None = None) -> Callable[[], int]:
    """The callable the supervisor runs in a forked child."""

    def run() -> int:
        return ControlPlane(config, ready_file).run()

    return run


def _lower_priority(nice: int) -> None:
    """Add `control.nice` to this process's niceness before any thread starts, so every thread it
    creates (gRPC's pool, the portal, the scheduler, generation's helper) inherits it. The RADIUS
    workers are separate processes and keep theirs. Nothing here can raise it again: an
    unprivileged process may lower its priority but not take it back, and it need not."""
    if nice:
        now = os.nice(nice)
        log.info("control plane: CPU niceness %d", now)


def control_ready_path(ready_file: str) -> str:
    """Where the control process reports its bound ports: beside the RADIUS ready file."""
    root, ext = os.path.splitext(ready_file)
    return f"{root}.control{ext or '.json'}"


class ControlPlane:
    def __init__(self, config: Config, ready_file: str | None = None):
        self.config = config
        self.ready_file = ready_file
        self.stopping = threading.Event()

    def run(self) -> int:
        _lower_priority(self.config.control.nice)
        from control.fees import run_fees
        from control.grpc_server import create_server, graceful_shutdown
        from control.portal.app import create_app
        from control.portal.server import start_portal_thread

        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        config = self.config
        clock = default_clock()
        store = Store(config.server.data_dir, map_size=config.server.map_size_mb << 20)
        keyring = KeyRing.load_or_create(config.control.key_file)
        self._roll_back_interrupted(store)

        grpc_server, grpc_port = create_server(store, keyring, config.control, clock=clock,
                                               prepaid=config.prepaid)
        grpc_server.start()
        portal = None
        portal_port = None
        if config.control.portal_listen:
            app = create_app(store, keyring, config, clock=clock)
            portal, _, portal_port = start_portal_thread(app, config.control.portal_listen)
        scheduler = threading.Thread(target=self._schedule_fees, args=(run_fees, store, clock),
                                     name="radcore-fees", daemon=True)
        scheduler.start()
        log.info("control plane: gRPC on port %s, portal on port %s, fees every %d s",
                 grpc_port, portal_port, config.control.fee_interval_seconds)
        if self.ready_file:
            _write_json(control_ready_path(self.ready_file),
                        {"pid": os.getpid(), "grpc_port": grpc_port, "portal_port": portal_port})

        self.stopping.wait()
        log.info("control plane stopping")
        graceful_shutdown(grpc_server)
        if portal is not None:
            portal.stop()
        scheduler.join(30)
        store.close()
        return 0

    @staticmethod
    def _roll_back_interrupted(store: Store) -> None:
        """A generation cut off by a crash is invisible but holds PINs; nobody is waiting for it."""
        for number in incomplete_generations(store):
            removed = rollback_generation(store, number)
            log.warning("rolled back interrupted generation of series %d (%d cards)", number, removed)

    def _schedule_fees(self, run_fees, store: Store, clock) -> None:
        interval = self.config.control.fee_interval_seconds
        while not self.stopping.wait(interval):
            try:
                report = run_fees(store, clock)
                log.info("scheduled fee run: %s", report)
            except Exception:
                log.exception("scheduled fee run failed; the next one resumes it")


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
