"""The worker's send side (`radcore/_outbox.pxi` through `radcore._lane.Lane`): every queued reply
reaches its destination as its own datagram, whether it left in a UDP GSO message with others of its
size and destination or alone, and a path that cannot segment still gets every reply.

Real UDP sockets on loopback. A receiver with UDP_GRO set gets a GSO message intact (one buffer and
the segment size), which is how these tests see the coalescing itself; a plain receiver gets the
ordinary datagrams every switch sees.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sendmmsg and UDP GSO are Linux")

lane_module = pytest.importorskip("radcore._lane")

from radcore.dupcache import ACCT  # noqa: E402

UDP_GRO = 104
SO_NO_CHECK = 11  # the socket sends IPv4 UDP without checksums, which the kernel cannot segment
GSO_SEGMENTS = 64
GSO_MAX_SIZE = 512


def _socket(gro: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if gro:
        s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    s.settimeout(2)
    return s


def _reply(dest: int, n: int, size: int) -> bytes:
    """A distinct payload: which destination, which reply, padded to `size`."""
    head = struct.pack("!BI", dest, n)
    return head + bytes((n + i) & 0xFF for i in range(size - len(head)))


def _drain(sock: socket.socket, expected: int) -> list[tuple[bytes, int]]:
    """(buffer, GRO segment size or 0) per message received, until `expected` datagrams are in."""
    got, datagrams = [], 0
    while datagrams < expected:
        data, anc, _flags, _addr = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
        seg = next((struct.unpack("=I", v[:4])[0] for lvl, typ, v in anc
                    if lvl == socket.SOL_UDP and typ == UDP_GRO), 0)
        got.append((data, seg))
        datagrams += -(-len(data) // seg) if seg else 1
    return got


def _datagrams(messages: list[tuple[bytes, int]]) -> list[bytes]:
    out = []
    for data, seg in messages:
        out.extend(data[i:i + seg] for i in range(0, len(data), seg)) if seg else out.append(data)
    return out


@pytest.fixture
def server():
    s = _socket()
    s.setblocking(False)
    yield s
    s.close()


def test_replies_of_one_size_and_destination_leave_together_and_arrive_as_queued(server):
    """150 Accounting-Responses for one switch leave as 64 + 64 + 22; a second switch's replies of two
    sizes leave as one message per size; replies too large to segment go alone. Every datagram
    arrives byte for byte, in the order queued among those of its size and destination."""
    gw1, gw2, gw3 = _socket(gro=True), _socket(gro=True), _socket(gro=True)
    try:
        lane = lane_module.Lane([(server, ACCT)], 512)
        queued = defaultdict(list)
        for n in range(150):  # interleaved, as a batch's answers are
            for dest, sock, size in ((1, gw1, 20), (2, gw2, 38 if n % 3 else 20), (3, gw3, 600)):
                if dest == 1 or n < 30 or (dest == 3 and n < 4):
                    if dest == 3 and n >= 4:
                        continue
                    wire = _reply(dest, n, size)
                    lane.queue(server, wire, sock.getsockname())
                    queued[dest].append(wire)
        total = sum(len(v) for v in queued.values())
        assert lane.flush() == (total, [])
        assert lane.gso

        got1 = _drain(gw1, len(queued[1]))
        assert [(len(d), seg) for d, seg in got1] == [(64 * 20, 20), (64 * 20, 20), (22 * 20, 20)]
        assert _datagrams(got1) == queued[1]

        got2 = _drain(gw2, len(queued[2]))
        assert sorted(seg for _, seg in got2) == [20, 38]  # one message per size
        for size in (20, 38):
            assert [w for w in _datagrams(got2) if len(w) == size] == [w for w in queued[2] if len(w) == size]

        got3 = _drain(gw3, len(queued[3]))
        assert [seg for _, seg in got3] == [0] * len(queued[3])  # 600 octets: never segmented
        assert _datagrams(got3) == queued[3]
    finally:
        for s in (gw1, gw2, gw3):
            s.close()


def test_ipv6_replies_coalesce_too():
    """UDP_SEGMENT works the same over IPv6: ten equal replies to one switch leave as one message."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    gw = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        server.bind(("::1", 0))
        server.setblocking(False)
        gw.bind(("::1", 0))
        gw.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        gw.settimeout(2)
        lane = lane_module.Lane([(server, ACCT)], 16)
        wires = [_reply(1, n, 20) for n in range(10)]
        for wire in wires:
            lane.queue(server, wire, gw.getsockname())
        assert lane.flush() == (10, [])
        got = _drain(gw, 10)
        assert [(len(data), seg) for data, seg in got] == [(200, 20)]
        assert _datagrams(got) == wires
    finally:
        server.close()
        gw.close()


def test_a_path_that_cannot_segment_gets_every_reply_one_by_one():
    """The kernel refuses GSO on a socket without UDP checksums (EINVAL): the outbox sends that
    message's replies and every later one as single datagrams, and stops trying."""
    server = _socket()
    server.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    gw = _socket(gro=True)
    try:
        lane = lane_module.Lane([(server, ACCT)], 256)
        assert lane.gso
        for round_ in range(2):
            wires = [_reply(1, round_ * 100 + n, 20) for n in range(100)]
            for wire in wires:
                lane.queue(server, wire, gw.getsockname())
            assert lane.flush() == (100, [])
            assert not lane.gso
            got = _drain(gw, 100)
            assert all(seg == 0 for _, seg in got)  # each its own datagram
            assert _datagrams(got) == wires
    finally:
        server.close()
        gw.close()


def test_a_refused_gso_message_counts_each_of_its_replies_as_failed(server):
    """A destination the kernel refuses (port 0) fails every reply of the message it was in, each
    reported with its address, while the other destination's replies still go."""
    gw = _socket()
    try:
        lane = lane_module.Lane([(server, ACCT)], 64)
        for n in range(10):
            lane.queue(server, _reply(1, n, 20), ("127.0.0.1", 0))
            lane.queue(server, _reply(2, n, 20), gw.getsockname())
        sent, failed = lane.flush()
        assert sent == 10
        assert len(failed) == 10 and {addr for addr, _ in failed} == {"127.0.0.1"}
        assert len(_drain(gw, 10)) == 10
        assert lane.gso  # a refused destination is not a path that cannot segment
    finally:
        gw.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([20, 21, 44, GSO_MAX_SIZE, GSO_MAX_SIZE + 1])),
                min_size=1, max_size=300))
def test_every_queued_reply_arrives_once_in_order_per_size_and_destination(server, plan):
    """Any mix of destinations and sizes, more than an outbox's capacity included (it sends when
    full): each destination receives exactly its replies, in queue order per size."""
    gws = [_socket() for _ in range(3)]
    try:
        lane = lane_module.Lane([(server, ACCT)], 64)  # outbox of 128: larger plans send midway
        queued = defaultdict(list)
        for n, (dest, size) in enumerate(plan):
            wire = _reply(dest, n, size)
            lane.queue(server, wire, gws[dest].getsockname())
            queued[dest].append(wire)
        assert lane.flush() == (len(plan), [])
        for dest, wires in queued.items():
            got = [gws[dest].recv(4096) for _ in wires]
            for size in {len(w) for w in wires}:
                assert [w for w in got if len(w) == size] == [w for w in wires if len(w) == size]
            assert sorted(got) == sorted(wires)
        for g in gws:
            g.setblocking(False)
            with pytest.raises(BlockingIOError):
                g.recv(4096)  # nothing more, no duplicates
    finally:
        for g in gws:
            g.close()
