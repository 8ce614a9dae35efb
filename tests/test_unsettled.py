"""A journaled batch's replies wait for its record's flush (radcore/_unsettled.pxi, _syncer.pxi).

Under a backlog the worker flushes a batch's journal record on a thread of its own while it reads
and decides the next batch. These tests drive the real Lane over loopback sockets and a real store:
a batch that fills the lane is journaled and its replies stay unsent until the flush is collected; a
retransmission that arrives meanwhile waits for the Python path, which answers it from the cache;
and a flush that fails (the real fdatasync, on a file that cannot be flushed) loses that batch
alone: never answered, nothing of it in the store, while what was flushed before it survives.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from radcore import dictionary as d
from radcore import fastpath, journal, packet
from radcore.errors import StoreError
from radcore.records import CardStatus
from radcore.store import TOMBSTONE

from helpers_prepaid import SECRET, accounting, make_world
from helpers_server import loopback_pair

pytestmark = pytest.mark.skipif(fastpath.load_lane() is None, reason="the C lane is built on Linux only")

CAP = 8          # the lane's batch_max: a batch that fills it finds more waiting, so it is journaled
HOLD_MS = 60_000  # only the tests decide when the held transaction commits


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path)
    w.add_series(45, quantity=4, initial_status=CardStatus.ACTIVATED, face_balance=50_000_000,
                 max_concurrent_calls=40)
    w.handler.fast_write.hold(HOLD_MS)
    return w


def _starts(world, idents) -> list[bytes]:
    return [accounting(world.number(45, i % 4), d.AcctStatus.START, conf_id=f"{i:08X} 0000AAAA 0000BBBB 0000CCCC",
                       session_id=f"{i:08X}", called="442079460000", ident=i) for i in idents]


def _serve(lane, world, cache, nas, server, raws):
    for raw in raws:
        nas.sendto(raw, server.getsockname())
    time.sleep(0.05)  # loopback has delivered by now; this is only slack for a loaded machine
    assert lane.receive([0]) == len(raws)
    return lane.serve(None, world.config, cache, world.handler.fast_write)


def _replies(nas, count: int, raws) -> dict[int, bytes]:
    """The next `count` replies on `nas`, by Identifier, each a valid Accounting-Response."""
    by_ident = {raw[1]: raw for raw in raws}
    nas.settimeout(3)
    got = {}
    for _ in range(count):
        wire = nas.recv(4096)
        assert packet.decode_response(wire, by_ident[wire[1]][4:20], SECRET).code == d.Code.ACCOUNTING_RESPONSE
        got[wire[1]] = wire
    return got


def _nothing_more(nas) -> bool:
    nas.settimeout(0.3)
    try:
        nas.recv(4096)
    except socket.timeout:
        return True
    return False


def _sessions(world) -> int:
    with world.store.begin() as txn:
        return sum(1 for key in txn.cursor(db=world.store.sessions).iternext(values=False)
                   if not key.startswith(TOMBSTONE))


def test_replies_leave_once_their_record_is_flushed_and_a_retransmission_waits(world):
    """Batch A fills the lane: journaled, none of its replies sent when `serve` returns. Batch B
    (a retransmission of A's first request and seven new Starts) releases A's eight replies at the
    end of its walk and hands the retransmission to the Python path; B's own replies follow at
    `settle`. The cache then answers A's retransmission with the reply A's request got."""
    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import ACCT

    cache = DuplicateCache(30)
    a, b = _starts(world, range(CAP)), _starts(world, range(CAP, 2 * CAP - 1))
    with loopback_pair() as (server, nas):
        lane = Lane([(server, ACCT)], CAP)
        answered, rest = _serve(lane, world, cache, nas, server, a)
        assert (answered, rest, lane.flush()) == (0, [], (0, []))
        assert world.handler.fast_write.appends == 1
        assert _nothing_more(nas), "a reply left before its journal record was flushed"

        answered, rest = _serve(lane, world, cache, nas, server, [a[0]] + b)
        assert answered == CAP and lane.accounted == CAP
        assert [r[0] for r in rest] == [a[0]]
        assert lane.flush() == (CAP, [])
        first = _replies(nas, CAP, a)
        host, port = "127.0.0.1", nas.getsockname()[1]
        assert cache.lookup((host, port, a[0][1], ACCT), a[0][4:20]) == first[a[0][1]]
        assert _nothing_more(nas)

        assert lane.settle(cache) == (CAP - 1, CAP - 1)
        assert lane.flush() == (CAP - 1, [])
        _replies(nas, CAP - 1, b)
        assert lane.settle(cache) == (0, 0)
    world.handler.fast_write.flush()
    assert _sessions(world) == 2 * CAP - 1


def _journal_fd(directory: str) -> int:
    """This process's descriptor of the journal file it writes in `directory`."""
    names = set(journal.journals(directory))
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.dirname(target) == os.path.realpath(directory) and os.path.basename(target) in names:
            return int(fd)
    raise AssertionError("no open journal file")


def test_a_failed_flush_loses_its_batch_and_keeps_the_flushed_one(world):
    """Batch A is journaled and flushed, then the journal's descriptor is pointed at /dev/null,
    where writes succeed and fdatasync fails (EINVAL). Batch B's replies are never sent, the lane
    reports the failure, and once the next writer has replayed the journal the store holds A's
    sessions and none of B's."""
    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import ACCT

    cache = DuplicateCache(30)
    a, b = _starts(world, range(CAP)), _starts(world, range(CAP, 2 * CAP))
    errors = []
    with loopback_pair() as (server, nas):
        lane = Lane([(server, ACCT)], CAP)
        lane.on_lane_error = errors.append
        assert _serve(lane, world, cache, nas, server, a) == (0, [])
        assert lane.settle(cache) == (CAP, CAP)
        assert lane.flush() == (CAP, [])
        _replies(nas, CAP, a)

        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, _journal_fd(world.store.journal_dir))
        finally:
            os.close(null)
        assert _serve(lane, world, cache, nas, server, b) == (0, [])
        assert lane.settle(cache) == (0, 0)
        assert lane.flush() == (0, [])
        assert _nothing_more(nas), "a reply left although its journal record never reached the disk"
    assert len(errors) == 1 and isinstance(errors[0], StoreError) and "journal" in str(errors[0])
    with world.store.begin(write=True):
        pass  # the next writer replays the journal's flushed records
    assert _sessions(world) == CAP
