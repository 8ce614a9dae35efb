"""Serving the portal from inside the control process: uvicorn on its own thread and event loop.

The control process already runs gRPC and the fee scheduler on threads, so the portal joins them as
one more thread instead of a process (it shares the control process's Store; an LMDB environment
must not be opened twice in one process). The listening socket is bound by the caller's thread
before the server thread starts, so a port already in use fails `start_portal_thread` at once, and
port 0 reports the port the kernel chose.

uvicorn is configured for this: no signal handlers (it does not install them off the main thread;
the control process owns SIGTERM), no lifespan, the plain asyncio loop (uvloop would install a
process-wide event loop policy), and proxy headers off by default: uvicorn otherwise trusts
X-Forwarded-For from 127.0.0.1, and a local client could then dodge the per-address login limit
by inventing addresses. Pass `forwarded_allow_ips` when a reverse proxy really sits in front.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import uvicorn

from radcore.config import parse_listen

log = logging.getLogger(__name__)


class PortalServer(uvicorn.Server):
    """A uvicorn server that knows its socket and sets `ready` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, ready: threading.Event | None):
        super().__init__(config)
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.ready = ready if ready is not None else threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            log.info("portal listening on http://%s:%d", self.host if ":" not in self.host
                     else f"[{self.host}]", self.port)
            self.ready.set()

    def serve_forever(self) -> None:
        """Run until `should_exit`; the thread body. A failure is kept in `error` for the starter."""
        try:
            self.run(sockets=[self.sock])
        except BaseException as e:  # SystemExit from a failed uvicorn startup included
            self.error = e
            log.exception("portal server stopped with an error")
        finally:
            self.sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to finish open requests and exit, then wait for the thread."""
        self.should_exit = True
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.force_exit = True
                self.thread.join(timeout)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


def run_portal(app: Any, host: str, port: int, *, ready: threading.Event | None = None,
               forwarded_allow_ips: str | None = None, log_level: str = "warning",
               access_log: bool = False) -> PortalServer:
    """Bind host:port now and serve `app` on a new daemon thread; returns at once.

    `ready` (also `server.ready`) is set when the server accepts connections; `server.port` is the
    bound port (useful with port 0) and `server.thread` the thread. Stop with `server.stop()`.
    """
    sock = bind(host, port)
    # log_config=None: leave the control process's logging setup alone (uvicorn would dictConfig it).
    config = uvicorn.Config(app, lifespan="off", loop="asyncio", log_config=None, log_level=log_level,
                            access_log=access_log,
                            proxy_headers=forwarded_allow_ips is not None,
                            forwarded_allow_ips=forwarded_allow_ips, server_header=False,
                            timeout_graceful_shutdown=5)
    server = PortalServer(config, sock, ready)
    server.thread = threading.Thread(target=server.serve_forever, name="radcore-portal", daemon=True)
    server.thread.start()
    return server


def start_portal_thread(app: Any, listen: str, *, timeout: float = 10.0,
                        **options: Any) -> tuple[PortalServer, threading.Thread, int]:
    """Serve `app` on `listen` ("IP:PORT", e.g. ControlConfig.portal_listen) and wait until it is up.

    Returns (server, thread, bound port). Raises RuntimeError if it does not come up within
    `timeout` seconds (the server is stopped first), OSError if the address cannot be bound.
    """
    host, port = parse_listen(listen)
    server = run_portal(app, host, port, **options)
    assert server.thread is not None
    deadline_step = 0.05
    waited = 0.0
    while not server.ready.wait(deadline_step):
        waited += deadline_step
        if not server.thread.is_alive() or waited >= timeout:
            server.stop(1.0)
            raise RuntimeError(f"portal did not start on {listen}: {server.error or 'timed out'}")
    return server, server.thread, server.port
