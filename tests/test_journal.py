"""The write-ahead journal (radcore.journal) and the write lane's transaction held across batches.

The lane may answer a batch on the strength of one journal append and commit LMDB later. These
tests hold it to what that promises: the store ends up byte for byte as if every batch had been
committed on its own (checked against a twin store that did exactly that), whether the transaction
is committed at a checkpoint, lost to a failed commit, or lost because the process was killed with
SIGKILL while holding it; and the file format replays only whole, intact records.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hyp

from radcore import dictionary as d
from radcore import fastpath, journal, packet, rating
from radcore.clock import FixedClock
from radcore.errors import StoreError
from radcore.handler import PrepaidHandler
from radcore.records import CardStatus
from radcore.store import DB_NAMES, Cdr, Store, card_key, get_card

from helpers_prepaid import SECRET, World, accounting, make_world
from test_acctlane import CONF_VSA, SOURCE_IP, dump, reference, twin

lane_only = pytest.mark.skipif(fastpath.load_lane() is None, reason="the C lane is built on Linux only")

HOLD_MS = 60_000  # long enough that only the tests decide when a checkpoint happens


# --- the file format --------------------------------------------------------------------------

ops = hyp.tuples(hyp.sampled_from([journal.PUT, journal.DELETE]), hyp.integers(0, len(DB_NAMES) - 1),
                 hyp.binary(min_size=1, max_size=40), hyp.binary(max_size=80))


@settings(max_examples=200, deadline=None)
@given(records=hyp.lists(hyp.lists(ops, min_size=1, max_size=6), min_size=1, max_size=6), cut=hyp.integers(0, 2000))
def test_records_round_trip_and_a_torn_tail_is_left_out(records, cut):
    """Whatever prefix of the file reached the disk, exactly the records wholly inside it come back,
    each with its operations in order."""
    payloads = [b"".join(journal.encode_op(op, db, k, v if op == journal.PUT else b"") for op, db, k, v in rec)
                for rec in records]
    framed = [journal.frame(p) for p in payloads]
    data = b"".join(framed)
    cut = min(cut, len(data))
    got, end = journal.read_records(data[:cut])
    whole = 0
    while whole < len(framed) and sum(map(len, framed[:whole + 1])) <= cut:
        whole += 1
    assert got == payloads[:whole]
    assert end == sum(map(len, framed[:whole]))
    for payload, rec in zip(got, records):
        assert list(journal.decode_ops(payload)) == [(op, db, k, v if op == journal.PUT else b"")
                                                     for op, db, k, v in rec]


def test_a_corrupt_record_ends_the_replay_there():
    first = journal.frame(journal.encode_op(journal.PUT, 1, b"k1", b"v1"))
    second = bytearray(journal.frame(journal.encode_op(journal.PUT, 1, b"k2", b"v2")))
    third = journal.frame(journal.encode_op(journal.DELETE, 1, b"k1"))
    second[-1] ^= 0x01  # a flipped bit in the value
    got, end = journal.read_records(first + bytes(second) + third)
    assert (len(got), end) == (1, len(first))


def test_a_malformed_operation_is_an_error_not_a_guess():
    with pytest.raises(StoreError, match="malformed"):
        list(journal.decode_ops(struct.pack("<BBHI", 9, 1, 1, 0) + b"k"))
    with pytest.raises(StoreError, match="operation header"):
        list(journal.decode_ops(b"\x01\x01"))


def append(writer: journal.JournalWriter, payload: bytes) -> None:
    """One durable record, as the write lane makes it: write, flush, then count it as flushed."""
    end = writer.write(payload)
    os.fdatasync(writer.fd)
    writer.flushed(end)


def test_recovery_replays_a_dead_writers_tail_and_skips_a_live_one(tmp_path):
    """Records beyond a journal's applied offset are replayed if its writer is gone (no flock) and
    left alone while it lives; a fully applied dead journal is deleted."""
    store = Store(tmp_path / "data", map_size=1 << 26)
    live = journal.JournalWriter(store.journal_dir)
    append(live, journal.encode_op(journal.PUT, DB_NAMES.index("meta"), b"live", b"1"))
    dead = journal.JournalWriter(store.journal_dir)
    append(dead, journal.encode_op(journal.PUT, DB_NAMES.index("meta"), b"dead", b"1"))
    append(dead, journal.encode_op(journal.PUT, DB_NAMES.index("meta"), b"dead", b"2") +
                 journal.encode_op(journal.PUT, DB_NAMES.index("cards"), b"\0\0\0\x2d\0\0\0\1", b"card"))
    dead.close()
    txn = store.begin(write=True)  # replays the dead journal, commits that, deletes it
    txn.abort()  # the caller's own transaction: nothing of the replay hangs on it
    with store.begin() as txn:
        assert txn.get(b"live", db=store.meta) is None
        assert txn.get(b"dead", db=store.meta) == b"2"
        assert txn.get(b"\0\0\0\x2d\0\0\0\1", db=store.cards) == b"card"
    assert journal.journals(store.journal_dir) == [live.name]
    live.close()
    store.close()
    reopened = Store(tmp_path / "data", map_size=1 << 26)  # opening replays what the live one left
    with reopened.begin() as txn:
        assert txn.get(b"live", db=reopened.meta) == b"1"
    reopened.close()


def test_a_replay_is_committed_before_anything_is_journaled_on_top_of_it(tmp_path):
    """Writer A dies with an unapplied record; writer B replays it, journals a newer value of the
    same key and dies too. Recovery must end with B's value whatever the files are named, which
    holds because B's replay of A was committed on its own before B wrote anything."""
    store = Store(tmp_path / "data", map_size=1 << 26)
    meta = DB_NAMES.index("meta")
    a = journal.JournalWriter(store.journal_dir)
    append(a, journal.encode_op(journal.PUT, meta, b"k", b"from A"))
    a.close()
    # A name that sorts after B's, so replaying both in name order would put A last.
    os.rename(os.path.join(store.journal_dir, a.name), os.path.join(store.journal_dir, "zz-1.log"))
    txn = store.begin(write=True)  # B takes the lock: A is replayed (and committed) first
    b = journal.JournalWriter(store.journal_dir)
    assert b.name < "zz-1.log"
    txn.put(b"k", b"from B", db=store.meta)
    append(b, journal.encode_op(journal.PUT, meta, b"k", b"from B"))
    txn.abort()  # B dies before its checkpoint
    b.close()
    with store.begin(write=True):
        pass
    with store.begin() as txn:
        assert txn.get(b"k", db=store.meta) == b"from B"
    store.close()


def test_every_waiting_thread_is_seen_until_its_own_wait_ends(tmp_path):
    """Two threads of one process waiting for the lock: the first one's wait ending must not hide
    the second one's from the holder."""
    holder = journal.Waiters(str(tmp_path))
    waiters = journal.Waiters(str(tmp_path))
    assert not holder.any()
    with waiters.waiting():
        with waiters.waiting():
            assert holder.any()
        assert holder.any()  # the outer wait goes on
    assert not holder.any()
    holder.close()
    waiters.close()


# --- the write lane holding its transaction -----------------------------------------------------

def _world(tmp_path) -> World:
    (tmp_path / "ref").mkdir()
    w = make_world(tmp_path / "ref")
    w.add_series(45, quantity=8, initial_status=CardStatus.ACTIVATED, face_balance=50_000_000,
                 max_concurrent_calls=40)
    return w


def _batches(world: World, seed: int, count: int = 12, size: int = 10) -> list[list[bytes]]:
    """Batches of Accounting-Requests: calls nobody authorized, started and later stopped, some
    with an Interim-Update, in random order across batches (a Stop always after its Start)."""
    rng = random.Random(seed)
    pending: list[tuple[str, str, int]] = []
    out = []
    for b in range(count):
        batch = []
        while len(batch) < size:
            if pending and rng.random() < 0.5:
                number, conf, seconds = pending.pop(rng.randrange(len(pending)))
                status = d.AcctStatus.STOP if rng.random() < 0.8 else d.AcctStatus.INTERIM_UPDATE
                if status == d.AcctStatus.INTERIM_UPDATE:
                    pending.append((number, conf, seconds + 30))
                batch.append(accounting(number, status, conf_id=conf, session_id=conf[:8], called="442079460000",
                                        session_time=seconds))
            else:
                number = world.number(45, rng.randrange(8))
                conf = f"{rng.getrandbits(32):08X} {b:08X} {len(batch):08X} 0000BBBB"
                pending.append((number, conf, rng.choice([1, 59, 61, 125, 3600])))
                batch.append(accounting(number, d.AcctStatus.START, conf_id=conf, session_id=conf[:8],
                                        called="442079460000"))
        out.append(batch)
    return out


def _run(world: World, batches, more: bool) -> list[list[bytes | None]]:
    lane, client = world.handler.fast_write, world.client("cisco-gw")
    replies = []
    for batch in batches:
        replies.append(lane.run_batch([(raw, client, SOURCE_IP) for raw in batch], more))
        world.clock.advance(1)
    return replies


def _journals(world: World) -> list[str]:
    return journal.journals(world.store.journal_dir)


@lane_only
def test_journaled_batches_checkpoint_to_the_same_bytes_as_batch_commits(tmp_path):
    """Batches answered on journal appends, committed once at the end, leave exactly the store and
    the replies that committing every batch does; the checkpoint records the journal as applied."""
    ref = _world(tmp_path)
    held = twin(ref, tmp_path / "held")
    held.handler.fast_write.hold(HOLD_MS)
    batches = _batches(ref, seed=1)
    expected = _run(ref, batches, more=False)
    assert _run(held, batches, more=True) == expected
    lane = held.handler.fast_write
    assert (lane.appends, lane.checkpoints) == (len(batches), 0)
    assert sum(wire is not None for batch in expected for wire in batch) == 120  # all the lane's
    [name] = _journals(held)
    size = os.path.getsize(os.path.join(held.store.journal_dir, name))
    lane.flush()
    assert lane.checkpoints == 1
    assert dump(held) == dump(ref)
    with held.store.begin() as txn:
        assert txn.get(journal.META_PREFIX + name.encode(), db=held.store.meta) == struct.pack("<Q", size)


@lane_only
def test_a_write_elsewhere_in_the_process_commits_the_held_transaction_first(tmp_path):
    """The sweeper, the Python path, anything in the worker that opens a write transaction while
    the lane holds one: the lane commits first instead of the process waiting on itself."""
    ref = _world(tmp_path)
    held = twin(ref, tmp_path / "held")
    held.handler.fast_write.hold(HOLD_MS)
    batches = _batches(ref, seed=2, count=3)
    _run(ref, batches, more=False)
    _run(held, batches, more=True)
    held.handler.tick()  # the sweeper writes
    assert held.handler.fast_write.checkpoints == 1
    assert dump(held) == dump(ref)


@lane_only
def test_card_authentication_sees_the_debits_of_journaled_batches(tmp_path):
    """While the write lane holds journaled batches uncommitted, the worker's card-authentication
    lane reads through that transaction: the credit amount it sends is the balance after those
    calls, exactly what the reference answers once they are committed."""
    from test_acctlane import access_request

    world = _world(tmp_path)
    world.handler.fast_write.hold(HOLD_MS)
    _run(world, _batches(world, seed=5, count=6), more=True)
    assert world.handler.fast_write.appends == 6
    client = world.client("cisco-gw")
    raw = access_request(world, 45, 3, "", "")
    fast = world.handler.fast_answer.decide(raw, client)
    assert world.handler.fast_write.checkpoints == 0  # answered while the batches were uncommitted
    world.handler.fast_write.flush()
    card = world.card(45, 3)
    assert card.balance < 50_000_000  # the batches did debit this card
    expected = reference(world, raw, client)
    assert fast is not None and fast == expected
    amount = dict(packet.decode_response(fast, raw[4:20], SECRET).attributes)[
        d.vsa_key(d.VENDOR_CISCO, d.H323_CREDIT_AMOUNT)]
    assert packet.vsa_text(amount, d.H323_CREDIT_AMOUNT) != "50.00"  # not the face value: the debits show


# Another process's write: opening the store waits for the lock, and so does begin(write=True).
OTHER_WRITER = """
import sys
from radcore.store import Store
other = Store(sys.argv[1], map_size=1 << 30)
with other.begin(write=True) as txn:
    txn.put(b"other-writer", b"was here", db=other.meta)
"""


@lane_only
def test_a_writer_waiting_for_the_lock_makes_the_holder_commit_at_its_next_batch(tmp_path):
    """Another process (a second worker, the control plane) that starts waiting for the write lock
    is not kept out for `checkpoint_ms`: the holder commits at the end of its next batch instead of
    journaling it, and the waiter's write goes through."""
    ref = _world(tmp_path)
    held = twin(ref, tmp_path / "held")
    lane = held.handler.fast_write
    lane.hold(HOLD_MS)
    batches = _batches(ref, seed=4, count=3)
    _run(ref, batches, more=False)
    _run(held, batches[:2], more=True)
    assert (lane.appends, lane.checkpoints) == (2, 0)
    assert not held.store.waiters.any()

    other = subprocess.Popen([sys.executable, "-c", OTHER_WRITER, str(tmp_path / "held")],
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    deadline = time.monotonic() + 10
    while not held.store.waiters.any():
        assert time.monotonic() < deadline, "the other writer never started waiting"
        time.sleep(0.005)
    _run(held, batches[2:], more=True)
    assert (lane.appends, lane.checkpoints) == (2, 1)  # the third batch was committed, not journaled
    assert other.wait(timeout=30) == 0
    assert dump(held) == dump(ref)
    with held.store.begin() as txn:
        assert txn.get(b"other-writer", db=held.store.meta) == b"was here"


@lane_only
def test_a_lost_checkpoint_is_replayed_from_the_journal(tmp_path):
    """The checkpoint's commit fails (a full disk, say) after three batches were answered on the
    journal's strength: the next write transaction, in this very process, replays them."""
    ref = _world(tmp_path)
    held = twin(ref, tmp_path / "held")
    batches = _batches(ref, seed=3, count=4)
    _run(ref, batches, more=False)

    class FailingCommit:
        """The store as the lane sees it, whose write transactions cannot commit."""

        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def begin(self, write=False):
            txn = self._store.begin(write)

            class Txn:
                def __getattr__(self, name):
                    return getattr(txn, name)

                def commit(self):
                    txn.abort()
                    raise OSError("No space left on device")
            return Txn()

    from radcore._acctlane import WriteLane
    h = held.handler
    lane = WriteLane(FailingCommit(held.store), h.settlement, h.lookups, held.clock)
    lane.hold(HOLD_MS)
    client = held.client("cisco-gw")
    for batch in batches[:3]:
        assert all(lane.run_batch([(raw, client, SOURCE_IP) for raw in batch], True))
        held.clock.advance(1)
    with pytest.raises(OSError, match="No space"):
        lane.flush()
    with held.store.begin(write=True):
        pass  # recovery
    h.fast_write.hold(HOLD_MS)
    _run(held, batches[3:], more=False)
    assert dump(held) == dump(ref)


@lane_only
@pytest.mark.parametrize("seed", range(3))
def test_a_writer_killed_holding_its_transaction_loses_nothing_it_answered(tmp_path, seed):
    """A real crash: a forked process opens the store, answers batches on journal appends and is
    killed with SIGKILL with its write transaction open. Opening the store afterwards replays what
    it journaled, to the same bytes as a store that committed every batch it answered."""
    ref = _world(tmp_path)
    path = tmp_path / "held"
    path.mkdir()
    ref.store.env.copy(str(path))
    batches = _batches(ref, seed=10 + seed, count=9)
    answered = random.Random(seed).randrange(1, len(batches) + 1)
    clock_start = ref.clock()
    _run(ref, batches[:answered], more=False)

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker-to-be-killed
        try:
            os.close(read)
            store, clock = Store(path, map_size=1 << 30), FixedClock(clock_start)
            world = World(ref.config, store, ref.keyring, clock,
                          PrepaidHandler(ref.config, clock=clock, store=store, keyring=ref.keyring))
            world.handler.fast_write.hold(HOLD_MS)
            _run(world, batches[:answered], more=True)
            os.write(write, b"%d" % world.handler.fast_write.appends)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(write)
    appends = int(os.read(read, 64) or b"0")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert appends == answered  # every batch was answered on the journal alone
    store = Store(path, map_size=1 << 30)
    survivor = World(ref.config, store, ref.keyring, ref.clock,
                     PrepaidHandler(ref.config, clock=ref.clock, store=store, keyring=ref.keyring))
    assert dump(survivor) == dump(ref)
    with store.begin(write=True):
        pass
    assert journal.journals(store.journal_dir) == []  # replayed, committed, deleted


# --- a real server under a backlog ----------------------------------------------------------------

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


class Burst:
    """Calls of series 45 that a NAS reports in bursts: the worker is stopped (SIGSTOP) while a
    whole burst queues up on its socket, so its batches find more waiting (and are journaled)."""

    PER_SOCKET = 200
    SECONDS = 125

    def __init__(self, cards: int, per_card: int):
        from test_e2e_prepaid import SECRET as E2E_SECRET

        self.secret = E2E_SECRET.encode()
        self.calls = [(serial, f"{serial:08X} {i:08X} 0BADCAFE 1D2E3F40")
                      for serial in range(cards) for i in range(per_card)]

    def request(self, ident: int, status: int, serial: int, conf: str) -> bytes:
        attrs = [(d.USER_NAME, f"45-{serial:09d}".encode()), (d.NAS_IP_ADDRESS, b"\x7f\0\0\1"),
                 (d.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (d.ACCT_SESSION_ID, conf[9:17].encode()),
                 (d.CALLED_STATION_ID, b"442079460000"), (CONF_VSA, f"h323-conf-id={conf}".encode())]
        if status == d.AcctStatus.STOP:
            attrs.append((d.ACCT_SESSION_TIME, self.SECONDS.to_bytes(4, "big")))
        return packet.encode_accounting_request(ident, attrs, self.secret)

    def send(self, server, worker: int, nases, status: int) -> dict[tuple[int, int], tuple[bytes, str]]:
        """Queue one request per call while the worker is stopped, then let it run; returns
        (socket index, Identifier) -> (request, conf id)."""
        os.kill(worker, signal.SIGSTOP)
        sent = {}
        try:
            for n, (serial, conf) in enumerate(self.calls):
                k, ident = divmod(n, self.PER_SOCKET)
                raw = self.request(ident, status, serial, conf)
                nases[k].send(server.acct_port, raw)
                sent[(k, ident)] = (raw, conf)
        finally:
            os.kill(worker, signal.SIGCONT)
        return sent

    def answered(self, nas, k: int, sent, timeout: float = 10) -> str | None:
        """The conf id of the next reply on socket k (a valid Accounting-Response), None if none."""
        wire = nas.recv(timeout)
        if wire is None:
            return None
        raw, conf = sent[(k, wire[1])]
        assert packet.decode_response(wire, raw[4:20], self.secret).code == d.Code.ACCOUNTING_RESPONSE
        return conf


@lane_only
def test_a_served_backlog_is_journaled_and_settles_to_the_micro_unit(tmp_path):
    """A real one-worker server. 1,600 Starts queue up while its worker is stopped, so its batches
    are answered on journal appends; then the same for the Stops. Every request is answered,
    /metrics counts the appends and their checkpoints, and each card ends with exactly its calls'
    cost, read from the store."""
    from helpers_server import UdpClient, metric_key
    from test_e2e_prepaid import UK, provision, read_card, start_server

    cards, per_card = 16, 100
    provision(tmp_path, quantity=cards, face_balance=100_000_000)
    burst = Burst(cards, per_card)
    with start_server(tmp_path, workers=1) as server:
        [worker] = _children(server.pid)
        nases = [UdpClient() for _ in range(len(burst.calls) // Burst.PER_SOCKET)]
        try:
            for status in (d.AcctStatus.START, d.AcctStatus.STOP):
                sent = burst.send(server, worker, nases, status)
                for k, nas in enumerate(nases):
                    for _ in range(Burst.PER_SOCKET):
                        assert burst.answered(nas, k, sent) is not None, "an Accounting-Request went unanswered"
            metrics = server.metrics()
        finally:
            for nas in nases:
                nas.sock.close()
    assert metrics[metric_key("radcore_replies_total", type="accounting_response")] == 2 * len(burst.calls)
    assert metrics["radcore_journal_appends_total"] >= 2  # at least one batch of each burst
    assert metrics["radcore_checkpoints_total"] >= 2
    cost = rating.cost(UK, Burst.SECONDS)
    for serial in range(cards):
        card, cdrs = read_card(tmp_path, serial)
        assert [c.cost for c in cdrs] == [cost] * per_card
        assert (card.balance, card.reserved, card.open_calls) == (100_000_000 - per_card * cost, 0, 0)


@lane_only
def test_a_server_killed_in_a_journaled_backlog_keeps_every_acknowledged_stop(tmp_path):
    """A real one-worker server is killed with SIGKILL (supervisor first, so nothing restarts it)
    as soon as the first replies to a queued burst of 4,000 Stops arrive: its write transaction is
    open and holds only journaled batches. The store as LMDB committed it lacks those Stops;
    opened for writing, it replays the journal, and every acknowledged Stop has its one CDR, every
    card its exact balance."""
    from helpers_server import ServerProcess, UdpClient, write_config
    from test_e2e_prepaid import UK, provision

    cards, per_card = 20, 200
    provision(tmp_path, quantity=cards, face_balance=100_000_000)
    burst = Burst(cards, per_card)
    config = write_config(tmp_path, workers=1, clients=[
        {"name": "gw", "network": "127.0.0.1", "secret": burst.secret.decode(), "profile": "cisco"}])
    # No checkpoint by the clock: the kill must find the journaled batches uncommitted.
    config.write_text(config.read_text().replace("[server]\n", "[server]\ncheckpoint_ms = 10000\n", 1))
    acknowledged: set[str] = set()
    with ServerProcess(config, handler="radcore.handler:make_handler") as server:
        [worker] = _children(server.pid)
        nases = [UdpClient() for _ in range(len(burst.calls) // Burst.PER_SOCKET)]
        try:
            sent = burst.send(server, worker, nases, d.AcctStatus.START)
            for k, nas in enumerate(nases):
                for _ in range(Burst.PER_SOCKET):
                    assert burst.answered(nas, k, sent) is not None
            sent = burst.send(server, worker, nases, d.AcctStatus.STOP)
            conf = burst.answered(nases[0], 0, sent)  # the first batch's replies are out
            os.kill(server.pid, signal.SIGKILL)
            os.kill(worker, signal.SIGKILL)
            acknowledged.add(conf)
            for k, nas in enumerate(nases):  # whatever reached the sockets before the kill
                while (conf := burst.answered(nas, k, sent, timeout=0.2)) is not None:
                    acknowledged.add(conf)
        finally:
            for nas in nases:
                nas.sock.close()
    assert 0 < len(acknowledged) < len(burst.calls)

    data = tmp_path / "var"
    assert journal.journals(str(data / journal.DIRECTORY))  # the worker was journaling
    committed = Store(data, readonly=True, map_size=1 << 30)  # no replay: what LMDB holds
    with committed.begin() as txn:
        stopped = sum(1 for _ in txn.cursor(db=committed.cdrs))
    committed.close()
    assert stopped < len(acknowledged), "the kill came after a checkpoint: nothing was left to replay"

    store = Store(data, map_size=1 << 30)  # replays the dead worker's journal
    cost = rating.cost(UK, Burst.SECONDS)
    try:
        with store.begin() as txn:
            cdrs = [Cdr.unpack(v) for _, v in txn.cursor(db=store.cdrs)]
            for serial in range(cards):
                card = get_card(txn, store, card_key(45, serial))
                mine = [c for c in cdrs if c.conf_id.startswith(f"{serial:08X} ")]
                assert card.balance == 100_000_000 - len(mine) * cost
                assert card.open_calls == per_card - len(mine)
    finally:
        store.close()
    by_conf = [c.conf_id for c in cdrs]
    assert len(by_conf) == len(set(by_conf))  # no call settled twice
    assert acknowledged <= set(by_conf)  # every acknowledged Stop survived
