"""The supervisor: binds the listeners, forks the RADIUS workers and the control process, watches them.

It runs in the process `radcore serve` starts. Children are forked after the sockets are bound and
before anything opens LMDB, so every child opens its own environment (an LMDB environment must never
cross a fork). The supervisor itself never touches the store: it restarts children that die,
forwards SIGHUP (after validating the config) and SIGTERM, and serves /metrics from the counters the
workers publish into shared memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from . import fastpath
from .config import Config, parse_listen
from .config_file import load_config
from .errors import ConfigError
from .listeners import Listeners, bind_listeners
from .metrics import SharedMetrics
from .server import HandlerFactory, NoStoreHandler, Worker, _drain

log = logging.getLogger(__name__)

class Supervisor:
    """Forks and watches the workers (and `extra_processes`), forwards signals, serves /metrics.

    An extra process is a callable run in a forked child (the control plane); it starts with
    SIGTERM at its default action and SIGHUP/SIGINT ignored until it installs its own handlers,
    and its return value is its exit status.

    A child that exits while we are not stopping is restarted after a backoff that doubles with
    each quick failure (0.5 s .. 30 s) and resets once a child has lived a minute. Restarts fork
    while the metrics thread exists; that is safe because the child only runs the worker loop,
    and `logging` re-creates its locks after fork.
    """

    def __init__(self, config: Config, handler_factory: HandlerFactory, *, workers: int | None = None,
                 extra_processes: Sequence[Callable[[], int | None]] = (), ready_file: str | None = None):
        self.config = config
        self.handler_factory = handler_factory
        self.workers = workers or config.server.workers or os.cpu_count() or 1
        self.extra = tuple(extra_processes)
        self.ready_file = ready_file
        self.metrics = SharedMetrics(self.workers, implementation=fastpath.IMPLEMENTATION)
        self.listeners: Listeners | None = None
        self.metrics_server = None
        self.children: dict[int, tuple[str, int]] = {}       # pid -> (kind, index)
        self._started: dict[tuple[str, int], float] = {}
        self._failures: dict[tuple[str, int], int] = {}
        self._restart_at: dict[tuple[str, int], float] = {}
        self._wake: tuple[socket.socket, ...] = ()
        self._stopping = False
        self._hup = False

    def run(self) -> int:
        """Start everything, supervise until SIGTERM/SIGINT, stop the children; returns 0."""
        self._wake = wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)}
        try:
            self._start()
            while not self._stopping:
                due = min(self._restart_at.values(), default=time.monotonic() + 1.0)
                if select.select([wake_r], [], [], max(0.0, min(1.0, due - time.monotonic())))[0]:
                    _drain(wake_r)
                self._reap()
                if self._hup:
                    self._reload()
                now = time.monotonic()
                for spec, when in list(self._restart_at.items()):
                    if when <= now and not self._stopping:
                        del self._restart_at[spec]
                        self._spawn(spec)
            return 0
        finally:
            self._shutdown()
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum, frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        elif signum == signal.SIGHUP:
            self._hup = True

    def _start(self) -> None:
        self.listeners = bind_listeners(self.config, self.workers)
        if self.config.server.metrics_listen:
            host, port = parse_listen(self.config.server.metrics_listen)
            self.metrics_server = self.metrics.serve(host, port)
        for index in range(self.workers):
            self._spawn(("worker", index))
        for index in range(len(self.extra)):
            self._spawn(("extra", index))
        if self.metrics_server is not None:
            self.metrics_server.start()
        ports = {"pid": os.getpid(), "auth_port": self.listeners.auth_port,
                 "acct_port": self.listeners.acct_port,
                 "metrics_port": self.metrics_server.port if self.metrics_server else None,
                 "workers": self.workers, "implementation": fastpath.IMPLEMENTATION}
        log.info("radcore RADIUS up: codec %s, auth %s, acct %s, metrics %s, %d workers",
                 fastpath.IMPLEMENTATION, _where(self.config.server.auth_listen, ports["auth_port"]),
                 _where(self.config.server.acct_listen, ports["acct_port"]),
                 _where(self.config.server.metrics_listen, ports["metrics_port"]), self.workers)
        if self.ready_file:
            tmp = f"{self.ready_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(ports, f)
            os.replace(tmp, self.ready_file)

    def _spawn(self, spec: tuple[str, int]) -> None:
        # Block signals across fork so none reaches the child before it installs its own handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("cannot fork %s %d: %s", *spec, exc)
            self._restart_at[spec] = time.monotonic() + 5.0
            return
        if pid == 0:
            self._child(spec, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[pid] = spec
        self._started[spec] = time.monotonic()

    def _child(self, spec: tuple[str, int], mask) -> None:
        """Runs in the forked child and never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for sig in (signal.SIGHUP, signal.SIGINT):  # until the child installs its own
                signal.signal(sig, signal.SIG_IGN)
            for sock in self._wake:
                sock.close()
            if self.metrics_server is not None:
                self.metrics_server.socket.close()
            kind, index = spec
            assert self.listeners is not None
            if kind == "worker":
                auth, acct = self.listeners.auth[index], self.listeners.acct[index]
                self.listeners.close(keep=(auth, acct))
                handler = self.handler_factory(self.config)
                worker = Worker(self.config, handler, self.metrics.recorder(index), auth, acct,
                                parent_pid=os.getppid())
                try:
                    code = worker.run(mask)
                finally:
                    close = getattr(handler, "close", None)
                    if close is not None:
                        close()
            else:
                self.listeners.close()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                code = self.extra[index]() or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("%s %d failed", *spec)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            spec = self.children.pop(pid, None)
            if spec is None or self._stopping:
                continue
            lived = time.monotonic() - self._started.get(spec, 0.0)
            failures = 0 if lived > 60 else self._failures.get(spec, 0) + 1
            self._failures[spec] = failures
            delay = min(30.0, 0.5 * 2 ** (failures - 1)) if failures else 0.5
            log.error("%s %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                      spec[0], spec[1], pid, _status(status), lived, delay)
            self.metrics.supervisor.add("worker_restarts")
            self.metrics.supervisor.publish()
            self._restart_at[spec] = time.monotonic() + delay

    def _reload(self) -> None:
        """Validate the file once here, then let each child reload; restarted workers get it too."""
        self._hup = False
        try:
            fresh = load_config(self.config.path)
        except ConfigError as exc:
            log.error("SIGHUP ignored, the config is unusable: %s", exc)
            return
        self.config = self.config.with_clients_of(fresh)
        log.info("SIGHUP: %d clients; telling %d children", len(self.config.clients), len(self.children))
        self._signal_children(signal.SIGHUP)

    def _signal_children(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _shutdown(self, grace: float = 10.0) -> None:
        """SIGTERM every child, wait `grace` seconds for them to finish their batch, then SIGKILL."""
        self._stopping = True
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        if self.children:
            log.error("killing %d children that ignored SIGTERM", len(self.children))
            self._signal_children(signal.SIGKILL)
            while self.children:
                pid, _ = os.waitpid(-1, 0)
                self.children.pop(pid, None)
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.listeners is not None:
            self.listeners.close()
        if self.ready_file and os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        self.metrics.close()
        log.info("radcore RADIUS stopped")


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def _where(listen: str, port: int | None) -> str:
    if not listen or port is None:
        return "off"
    host, _ = parse_listen(listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(config: Config, handler_factory: HandlerFactory, *, workers: int | None = None,
          extra_processes: Sequence[Callable[[], int | None]] = (), ready_file: str | None = None) -> int:
    """Run the RADIUS supervisor in this process until SIGTERM/SIGINT; returns the exit code."""
    return Supervisor(config, handler_factory, workers=workers, extra_processes=extra_processes,
                      ready_file=ready_file).run()


def run_server(config_path: str, *, handler_factory: HandlerFactory | None = None,
               ready_file: str | None = None, workers: int | None = None) -> int:
    """Load the config, set up logging, serve. `ready_file` defaults to $RADCORE_READY_FILE.

    Raises `ConfigError` for an unusable config (the CLI prints it); returns 1 if a listener
    cannot be bound, else 0 after a clean SIGTERM.
    """
    config = load_config(config_path)
    logging.basicConfig(format="%(asctime)s %(levelname)s radcore[%(process)d] %(name)s: %(message)s")
    logging.getLogger().setLevel(config.server.log_level.upper())
    try:
        return serve(config, handler_factory or NoStoreHandler, workers=workers,
                     ready_file=ready_file or os.environ.get("RADCORE_READY_FILE") or None)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


def _import_factory(path: str) -> HandlerFactory:
    module, _, attr = path.partition(":")
    if not attr:
        raise SystemExit(f"--handler {path!r}: expected MODULE:CALLABLE")
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m radcore.supervisor --config FILE [--ready-file F] [--handler MOD:FACTORY]`."""
    parser = argparse.ArgumentParser(prog="python -m radcore.supervisor", description=main.__doc__)
    parser.add_argument("--config", required=True, help="the TOML config file")
    parser.add_argument("--ready-file", help="write the bound ports here as JSON once serving")
    parser.add_argument("--handler", help="MODULE:CALLABLE handler factory (default: no card store)")
    parser.add_argument("--workers", type=int, help="override server.workers")
    args = parser.parse_args(argv)
    factory = _import_factory(args.handler) if args.handler else None
    try:
        return run_server(args.config, handler_factory=factory, ready_file=args.ready_file,
                          workers=args.workers)
    except ConfigError as exc:
        print(f"radcore: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Delegate to the imported module so classes (NoReply, ...) are the ones handlers import.
    from radcore.supervisor import main as _main
    sys.exit(_main())
