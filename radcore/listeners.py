"""The RADIUS listeners: one auth and one acct socket per worker, bound before any worker forks.

The supervisor binds one auth and one acct socket *per worker* in SO_REUSEPORT groups
before forking, and each worker uses its own pair. Binding in the parent resolves port 0 once
(tests, and the ready file), and no packet can arrive at a port nobody has bound yet during
start-up. The kernel hashes each NAS 4-tuple to one socket of a group, so a NAS's retransmissions
always reach the same worker; that is what makes the per-worker duplicate cache correct. The
parent keeps every socket open, so a crashed worker's socket stays in its group: the hash does
not reshuffle, and packets queue for the replacement worker instead of going to a worker whose
cache has never seen them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from .config import Config, parse_listen

RCVBUF_BYTES = 4 << 20  # absorbs bursts while a batch commits; the kernel caps it at rmem_max


class Listeners:
    """One auth and one acct socket per worker slot (index = slot), all bound before any fork."""

    def __init__(self, auth: list[socket.socket], acct: list[socket.socket]):
        self.auth, self.acct = auth, acct
        self.auth_port = auth[0].getsockname()[1]
        self.acct_port = acct[0].getsockname()[1]

    def close(self, keep: Sequence[socket.socket] = ()) -> None:
        for sock in self.auth + self.acct:
            if sock not in keep:
                sock.close()


def bind_listeners(config: Config, slots: int) -> Listeners:
    auth = _bind_group(config.server.auth_listen, slots)
    try:
        acct = _bind_group(config.server.acct_listen, slots)
    except BaseException:
        for sock in auth:
            sock.close()
        raise
    return Listeners(auth, acct)


def _bind_group(listen: str, count: int) -> list[socket.socket]:
    """`count` non-blocking UDP sockets sharing one address in an SO_REUSEPORT group.

    SO_REUSEPORT would let us silently *join* another process's group on the same port (a second
    radcore started by mistake, which would then get half the traffic), and the kernel may even
    autobind port 0 into such a group. So a plain probe socket binds first: it fails with
    EADDRINUSE if anyone holds the port, and for port 0 it picks a port nobody holds.
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((host, port))
            sock.setblocking(False)
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group
