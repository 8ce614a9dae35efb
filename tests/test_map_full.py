"""Disk full / LMDB map full: no Accounting-Response for what is not on disk, auth keeps serving.

A store with a 1 MiB map is filled to the last page. LMDB can keep rewriting records in a full map
by recycling the pages its previous transactions freed, so the test also holds a read transaction
open (as a long report or backup would): pages freed after it cannot be reused, and once the
recyclable ones are used up every write the server attempts fails with MapFullError, exactly like
a full disk.

With the server on that store:
- accounting gets no reply (counted as `commit_failed`), however often the NAS retransmits;
- card authentication of an activated card is accepted with its available credit (its only write,
  the last-use time, is bookkeeping);
- what needs a write is refused with the profile's service_unavailable code: number authorization
  (a reservation), a wrong PIN (it must be counted), a pending card (activation);
- decisions needing no write stand (an unknown card is still "invalid account");
- Status-Server is answered and the log says plainly what is wrong and what to do.

Then the server is stopped, restarted on the same data directory with a larger map_size_mb, and
the NAS's retransmissions of the very same Accounting-Requests are settled: nothing was lost, the
card is debited once, and calls are authorized again.
"""

from __future__ import annotations

import os
from itertools import count

import helpers_load as hl
import helpers_prepaid as hp
import helpers_server as hs
import lmdb
import pytest

from radcore import dictionary as d
from radcore import packet
from radcore.config_file import load_config
from radcore.replies import return_code
from radcore.server import NoReply
from radcore.store import CardStatus, Store, card_key, get_card, put_card

MAP_MB = 1
BIGGER_MB = 64
FACE = 5_000_000
SECRET = hl.SECRET.encode()
_ids = count(1)


def fill(store: Store, filler) -> int:
    """Write filler until nothing more fits; returns the number of filler records."""
    n = 0
    for size in (2000, 400, 60, 8):
        for _ in range(3):  # a failed put may still leave room for smaller ones in a fresh txn
            try:
                with store.env.begin(write=True, db=filler) as txn:
                    while True:
                        txn.put(b"%08d" % n, os.urandom(size))
                        n += 1
            except lmdb.MapFullError:
                pass
    return n


def exhaust_recycling(store: Store, filler) -> None:
    """With a reader holding the current snapshot, spend the pages LMDB could still recycle."""
    failures = 0
    while failures < 5:
        try:
            with store.env.begin(write=True, db=filler) as txn:
                txn.put(b"00000000", os.urandom(8))
            failures = 0
        except lmdb.MapFullError:
            failures += 1


def ask(proc, data: bytes, port: int, timeout: float = 3.0) -> packet.Packet | None:
    with hs.UdpClient() as nas:
        raw = nas.exchange(port, data, timeout)
    return None if raw is None else packet.decode_response(raw, data[4:20], SECRET)


def acct_stop(conf: str, ident: int, seconds: int = 125) -> bytes:
    return hl.accounting_request(ident, hl.number(0), d.AcctStatus.STOP, conf, session_time=seconds)


@pytest.mark.slow
def test_full_map_refuses_accounting_keeps_auth_and_recovers_after_growth(tmp_path):
    pins = hl.provision(tmp_path, quantity=3, face_balance=FACE, initial_status=CardStatus.ACTIVATED,
                        map_size=MAP_MB << 20)
    data = tmp_path / "var"
    store = Store(data, map_size=MAP_MB << 20)
    with store.begin(write=True) as txn:  # card 2 waits for activation on its first use
        card = get_card(txn, store, card_key(hl.SERIES, 2))
        card.status = CardStatus.PENDING
        put_card(txn, store, card_key(hl.SERIES, 2), card)
    filler = store.env.open_db(b"test-filler")
    assert fill(store, filler) > 100
    pin_snapshot = store.env.begin()  # the long reader
    exhaust_recycling(store, filler)

    config = hl.write_config(tmp_path, workers=1, map_size_mb=MAP_MB)
    profile = load_config(config).clients[0].profile
    unavailable = return_code(profile, d.ReturnCode.SERVICE_UNAVAILABLE)
    stops = [acct_stop(f"full-{n}", 50 + n, 125 + n) for n in range(3)]
    try:
        with hl.prepaid_server(config) as server:
            before = server.metrics().get(hs.metric_key("radcore_dropped_total", reason="commit_failed"), 0)
            for attempt in range(2):  # the NAS retransmits; still nothing is acknowledged
                for stop in stops:
                    assert ask(server, stop, server.acct_port, timeout=0.5) is None, server.log()
            server.wait_metric("radcore_dropped_total", before + 6, reason="commit_failed")

            reply = ask(server, hl.access_request(next(_ids), hl.number(0), pins[0]), server.auth_port)
            assert reply is not None and reply.code == d.Code.ACCESS_ACCEPT, server.log()
            assert hl.vsa_value(reply, d.H323_CREDIT_AMOUNT) == "5.00"
            assert hl.return_code(reply) == 0

            for what, request in [
                    ("number authorization", hl.access_request(next(_ids), hl.number(0), pins[0],
                                                                called=hl.UK_NUMBER, conf_id="new-call")),
                    ("wrong PIN", hl.access_request(next(_ids), hl.number(1), "0000000001")),
                    ("activation", hl.access_request(next(_ids), hl.number(2), pins[2]))]:
                reply = ask(server, request, server.auth_port)
                assert reply is not None and reply.code == d.Code.ACCESS_REJECT, what
                assert hl.return_code(reply) == unavailable, what

            reply = ask(server, hl.access_request(next(_ids), "45-099999999", "1234567890"), server.auth_port)
            assert hl.return_code(reply) == return_code(profile, d.ReturnCode.INVALID_ACCOUNT)
            auth = os.urandom(16)
            with hs.UdpClient() as nas:
                raw = nas.exchange(server.auth_port, hs.status_server(authenticator=auth, secret=hl.SECRET))
            assert raw is not None and packet.decode_response(raw, auth, SECRET).code == d.Code.ACCESS_ACCEPT
            assert server.proc.poll() is None
            assert server.stop() == 0
            log = server.log()
        assert "LMDB map is full" in log and "raise map_size" in log, log
        assert "left unanswered or refused" in log
    finally:
        pin_snapshot.abort()
        store.close()

    [(card0, cdrs0), (card1, _), (card2, _)] = hl.read_cards(tmp_path, [0, 1, 2], map_size=MAP_MB << 20).values()
    assert (card0.balance, cdrs0) == (FACE, []), "nothing was debited while the map was full"
    assert card1.failed_pins == 0 and card2.status == CardStatus.PENDING

    # Space is made: same data directory, bigger map. The NAS retransmits the very same Stops.
    config = hl.write_config(tmp_path, workers=1, map_size_mb=BIGGER_MB)
    with hl.prepaid_server(config) as server:
        for stop in stops:
            reply = ask(server, stop, server.acct_port)
            assert reply is not None and reply.code == d.Code.ACCOUNTING_RESPONSE, server.log()
        reply = ask(server, hl.access_request(next(_ids), hl.number(0), pins[0], called=hl.UK_NUMBER,
                                              conf_id="after-growth"), server.auth_port)
        assert reply.code == d.Code.ACCESS_ACCEPT and hl.credit_time(reply) > 0
        assert ask(server, hl.access_request(next(_ids), hl.number(2), pins[2]),
                   server.auth_port).code == d.Code.ACCESS_ACCEPT
    [(card0, cdrs0), (card2, _)] = hl.read_cards(tmp_path, [0, 2], map_size=BIGGER_MB << 20).values()
    costs = [hl.call_cost(hl.UK_NUMBER, 125 + n) for n in range(3)]
    assert sorted(c.cost for c in cdrs0) == sorted(costs)
    assert card0.balance == FACE - sum(costs)
    assert card2.status == CardStatus.ACTIVATED


# ---------------------------------------------------------------------------------------------
# The same rules in-process, with the commit failing on demand (no map to fill)


@pytest.fixture
def world(tmp_path):
    w = hp.make_world(tmp_path)
    w.add_series(45, quantity=4)
    yield w
    w.handler.close()


def test_read_only_decisions_when_the_commit_fails(world, monkeypatch):
    """Every write attempt fails: what a card authentication needs is only read, so it is accepted;
    what must be written is refused as service unavailable; accounting is left unanswered."""

    def decide(reply):
        return int(hp.vsa(reply, d.H323_RETURN_CODE))

    assert world.access(45, 0)[0] == d.Code.ACCESS_ACCEPT  # activates card 0 while writes work
    for _ in range(world.config.prepaid.max_failed_pins):  # and locks card 3
        world.access(45, 3, pin="0000000000")
    assert world.card(45, 3).locked_until > 0
    before = {serial: world.card(45, serial) for serial in range(4)}

    def full(*args, **kwargs):
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached")
    monkeypatch.setattr(world.handler, "_write_pass", full)

    reply = world.access(45, 0)
    assert reply[0] == d.Code.ACCESS_ACCEPT and decide(reply) == 0
    assert hp.vsa(reply, d.H323_CREDIT_AMOUNT) == "10.00"
    for what, reply in [("number authorization", world.access(45, 0, called="442079460000", conf_id="X")),
                        ("wrong PIN", world.access(45, 0, pin="0000000000")),
                        ("activation", world.access(45, 1))]:
        assert (reply[0], decide(reply)) == (d.Code.ACCESS_REJECT, int(d.ReturnCode.SERVICE_UNAVAILABLE)), what
    assert decide(world.access(45, 3)) == int(d.ReturnCode.RETRIES_EXCEEDED), "a locked card stays locked"
    assert decide(world.access(45, 0, user_name="45-000000099")) == int(d.ReturnCode.INVALID_ACCOUNT)
    stop = world.accounting(45, 0, d.AcctStatus.STOP, conf_id="Y", session_time=60, called="442079460000")
    assert isinstance(stop, NoReply) and stop.reason == "commit_failed"
    assert {serial: world.card(45, serial) for serial in range(4)} == before, "nothing was written"
    # Only the four requests that needed a write tried one; the read-only answers never did.
    assert world.handler.failed_commits == 4
