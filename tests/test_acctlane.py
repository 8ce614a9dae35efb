"""The C accounting lane (radcore._acctlane) against the Python reference (radcore.settlement).

Two stores start as byte-for-byte copies. Every accounting request goes to the reference on one
and through the lane on the other (the reference deciding there too when the lane declines); after
every request the replies must be the same bytes, and at the end so must every record the
settlement writes: cards, sessions, the deadline index and CDRs. The flows are generated: announced
and unannounced calls, Interim-Updates, duplicates, Stops before Starts, late reports after a Stop,
delays, tax, grace periods, cards that run dry, numbers that do not rate. The tests also check the
lane answers most of them, so the comparison is never vacuous.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hyp

from radcore import dictionary as d
from radcore import fastpath, packet, rating
from radcore.errors import PacketError
from radcore.handler import PrepaidHandler
from radcore.records import CardStatus, RoutingPlan
from radcore.server import NoReply
from radcore.store import Store, card_key, iter_card_cdrs

import helpers_prepaid
from helpers_prepaid import NAS_IP, SECRET, World, accounting, make_world, signed_accounting

pytestmark = pytest.mark.skipif(fastpath.load_lane() is None, reason="the C lane is built on Linux only")

CONF_VSA = d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID)
DBS = ("cards", "sessions", "session_deadlines", "cdrs")
SOURCE_IP = "127.0.0.1"


def twin(world: World, path) -> World:
    """A second world over a byte-for-byte copy of `world`'s store, with its own handler and clock."""
    path.mkdir()
    world.store.env.copy(str(path))
    store = Store(path, map_size=1 << 30)
    clock = type(world.clock)(world.clock())
    handler = PrepaidHandler(world.config, clock=clock, store=store, keyring=world.keyring)
    return World(world.config, store, world.keyring, clock, handler, world.pins)


def dump(world: World) -> dict[str, list[tuple[bytes, bytes]]]:
    with world.store.begin() as txn:
        return {name: list(txn.cursor(db=getattr(world.store, name))) for name in DBS}


def reference(world: World, raw: bytes, client) -> bytes | None:
    try:
        req = packet.parse_request(raw, client.secret, client.require_message_authenticator)
    except PacketError:
        return None
    [reply] = world.handler.handle([(req, client, (SOURCE_IP, 40000))])
    if reply is None or isinstance(reply, NoReply):
        return None
    return packet.encode_response(req, reply[0], reply[1], client.secret)




class Pair:
    """The reference world and the lane world, fed the same requests."""

    def __init__(self, world: World, tmp_path):
        self.ref = world
        self.fast = twin(world, tmp_path / "lane")
        self.lane = self.fast.handler.fast_write
        self.answered = 0
        self.reserved = 0

    def tick(self, seconds: int) -> None:
        self.ref.clock.advance(seconds)
        self.fast.clock.advance(seconds)

    def access(self, raw: bytes, client: str = "cisco-gw") -> bytes | None:
        wire, by_lane = self._both(raw, client)
        self.reserved += by_lane
        return wire

    def account(self, raw: bytes, client: str = "cisco-gw") -> bytes | None:
        wire, by_lane = self._both(raw, client)
        self.answered += by_lane
        return wire

    def _both(self, raw: bytes, client: str) -> tuple[bytes | None, bool]:
        """The reference's reply on one side; the lane's (else the reference's) on the other: equal."""
        expected = reference(self.ref, raw, self.ref.client(client))
        wire = self.lane.decide(raw, self.fast.client(client), SOURCE_IP)
        by_lane = wire is not None
        if not by_lane:
            wire = reference(self.fast, raw, self.fast.client(client))
        assert wire == expected, raw
        return wire, by_lane

    def check(self) -> None:
        assert dump(self.fast) == dump(self.ref)


@pytest.fixture
def world(tmp_path):
    (tmp_path / "ref").mkdir()
    w = make_world(tmp_path / "ref", """
[[clients]]
name = "edge"
network = "127.0.0.9"
secret = "{secret}"
profile = "cisco-routed"

[profiles.cisco-routed]
base = "cisco"
routing_avpair = "route={{route}}"
send_credit_time = false

[[clients]]
name = "plain"
network = "127.0.0.8"
secret = "{secret}"
profile = "generic"
""".format(secret=SECRET.decode()))
    with w.store.begin(write=True) as txn:
        txn.put(b"premium", RoutingPlan(name="premium", route="0099#").to_bytes(), db=w.store.routing_plans)
    w.add_series(45, quantity=6, initial_status=CardStatus.ACTIVATED, face_balance=5_000_000,
                 max_concurrent_calls=40)
    w.add_series(46, quantity=4, initial_status=CardStatus.ACTIVATED, face_balance=50_000_000,
                 tax_profile="vat20", max_concurrent_calls=40)
    w.add_series(48, quantity=2, initial_status=CardStatus.ACTIVATED, face_balance=900_000)
    w.add_series(49, quantity=2, initial_status=CardStatus.ACTIVATED, face_balance=3_000_000_000,
                 language="es", routing_plan="premium", max_concurrent_calls=50)
    w.add_series(47, quantity=2, initial_status=CardStatus.PENDING, face_balance=2_000_000)
    return w


def access_request(world: World, series: int, serial: int, called: str, conf_id: str) -> bytes:
    attrs = [(d.USER_NAME, world.number(series, serial).encode()),
             (d.NAS_IP_ADDRESS, bytes(map(int, NAS_IP.split(".")))), (d.CALLED_STATION_ID, called.encode())]
    if conf_id:
        attrs.append((CONF_VSA, f"h323-conf-id={conf_id}".encode()))
    return packet.encode_access_request(random.randrange(256), os.urandom(16), attrs, SECRET,
                                        password=world.pins[series][serial].encode())


CLIENTS = ("cisco-gw", "tenor", "edge", "plain")  # Cisco, Quintum, routed without credit time, no VSAs
NUMBERS = ("442079460000", "447700900123", "+12125550100", "+12125550100", "0012125550199", "4420", "999123",
           "*86", "")


@pytest.mark.parametrize("seed", range(6))
def test_generated_call_flows_leave_the_same_store_and_replies(world, tmp_path, seed):
    rng = random.Random(seed)
    random.seed(seed)
    pair = Pair(world, tmp_path)
    cards = [(45, i) for i in range(6)] + [(46, i) for i in range(4)] + [(47, 0), (48, 0), (48, 1)]
    calls = []
    for n in range(40):
        series, serial = rng.choice(cards)
        conf = f"{seed:08X} {n:08X} 0000AAAA 0000BBBB" if rng.random() < 0.85 else ""
        calls.append({"card": (series, serial), "conf": conf, "sid": f"S{seed}-{n}",
                      "called": rng.choice(NUMBERS), "time": 0, "nas": rng.choice(["", "", "gw-7"]),
                      "stage": "new"})

    def sign(raw: bytes) -> bytes:  # some switches sign their accounting
        return signed_accounting(raw) if rng.random() < 0.3 else raw

    for _ in range(500):
        call = rng.choice(calls)
        number = world.number(*call["card"])
        common = dict(conf_id=call["conf"], session_id=call["sid"], called=call["called"],
                      nas_id=call["nas"])
        roll = rng.random()
        if not call["nas"] and (call["stage"] == "new" and roll < 0.5
                                or call["stage"] == "authorized" and roll < 0.1):  # re-authorization
            pair.access(access_request(world, *call["card"], call["called"], call["conf"]))
            call["stage"] = "authorized"
        elif roll < 0.6:
            pair.account(sign(accounting(number, d.AcctStatus.START, **common)))
            call["stage"] = "started"
        elif roll < 0.8:
            call["time"] += rng.choice([0, 1, 3, 29, 30, 60, 61, 95, 127, 600])
            pair.account(sign(accounting(number, d.AcctStatus.INTERIM_UPDATE, session_time=call["time"],
                                         **common)))
        else:
            call["time"] += rng.choice([0, 0, 2, 45, 130, 211])
            pair.account(sign(accounting(number, d.AcctStatus.STOP, session_time=call["time"],
                                         delay=rng.choice([0, 0, 4]), extra=[(d.ACCT_TERMINATE_CAUSE,
                                                                              (1).to_bytes(4, "big"))],
                                         **common)))
            call["stage"] = "stopped"
        if rng.random() < 0.2:
            pair.tick(rng.choice([1, 7, 60]))
    pair.check()
    assert pair.answered >= 200, pair.answered  # most of the traffic is the lane's
    assert pair.reserved >= 1, pair.reserved  # volume: test_number_authorizations_reserve_exactly
    with pair.fast.store.begin() as txn:
        cdrs = sum(1 for s, n in cards for _ in iter_card_cdrs(txn, pair.fast.store, card_key(s, n)))
    assert cdrs > 10


def test_signed_accounting_is_verified_and_answered_by_the_lane(world, tmp_path):
    """A Message-Authenticator on accounting is checked in the lane: a good one is answered there, a
    wrong one (or a wrong secret) is dropped by the reference without touching the store, a second
    one or one of the wrong size is left to the reference, which drops it too."""
    pair = Pair(world, tmp_path)
    lane, cisco = pair.lane, pair.fast.client()
    n45 = world.number(45, 1)
    common = dict(conf_id="SIGNED-1", called="442079460000")
    stop = accounting(n45, d.AcctStatus.STOP, session_time=30, **common)
    assert pair.account(signed_accounting(accounting(n45, d.AcctStatus.START, **common))) is not None
    assert pair.answered == 1
    before = dump(pair.fast)
    bad = [signed_accounting(stop, tamper=True), signed_accounting(stop, b"other secret"),
           signed_accounting(signed_accounting(stop)),
           accounting(n45, d.AcctStatus.STOP, session_time=30, extra=[(d.MESSAGE_AUTHENTICATOR, bytes(15))],
                      **common)]
    for raw in bad:
        assert lane.decide(raw, cisco, SOURCE_IP) is None, raw
        assert reference(pair.fast, raw, cisco) is None  # dropped
    assert dump(pair.fast) == before
    assert pair.account(signed_accounting(stop)) is not None
    assert pair.answered == 2
    pair.check()


def test_number_authorizations_reserve_exactly_as_the_reference(world, tmp_path):
    """Calls on every card to every kind of number (a call holds all the money it may use, so each is
    stopped before the next), a second call while one is up (over series 48's limit of one), until
    the money runs out: the same Accepts and Rejects, holds, sessions and credit times."""
    rng = random.Random(7)
    pair = Pair(world, tmp_path)
    cards = [(45, i) for i in range(6)] + [(46, i) for i in range(4)] + [(47, 1), (48, 0), (48, 1), (49, 0)]
    for round_ in range(6):
        for series, serial in cards:
            for k, number in enumerate(NUMBERS):
                conf = f"R{round_:02d} {series}-{serial} {k}"
                client = CLIENTS[(k + round_) % len(CLIENTS)]
                wire = pair.access(access_request(world, series, serial, number, conf), client)
                if rng.random() < 0.3:  # a second call while this one holds the card
                    pair.access(access_request(world, series, serial, rng.choice(NUMBERS), conf + " b"), client)
                if wire is not None and wire[0] == d.Code.ACCESS_ACCEPT:
                    pair.account(accounting(world.number(series, serial), d.AcctStatus.STOP, conf_id=conf,
                                            session_id=f"s-{conf}", session_time=rng.choice([0, 9, 61, 300])),
                                 client)
        pair.tick(30)
    pair.check()
    assert pair.reserved >= 150, pair.reserved


def test_the_lane_settles_an_announced_call_to_the_micro_unit(world, tmp_path):
    """Number authorization reserves, Start binds, Interim and Stop settle (20% tax on series 46, a
    per-second rate whose charge and tax both round up): the card pays exactly rating.cost once,
    the hold is released, one CDR is written."""
    from helpers_prepaid import US

    pair = Pair(world, tmp_path)
    number, conf, called = world.number(46, 1), "CAFE0001 1 2 3", "+12125550100"
    pair.access(access_request(world, 46, 1, called, conf))
    assert pair.reserved == 1 and pair.fast.card(46, 1).reserved > 0
    for status, t in ((d.AcctStatus.START, None), (d.AcctStatus.INTERIM_UPDATE, 61),
                      (d.AcctStatus.STOP, 125), (d.AcctStatus.STOP, 125)):
        pair.account(accounting(number, status, conf_id=conf, session_id="s1", session_time=t, called=called))
    assert pair.answered == 4
    pair.check()
    cost = rating.cost(US, 125, 200_000)
    assert cost == 25_001  # 125 s at 0.01/min = 20,833.3 -> 20,834; 20% tax 4,166.8 -> 4,167
    card = pair.fast.card(46, 1)
    assert (card.balance, card.reserved, card.open_calls) == (50_000_000 - cost, 0, 0)
    with pair.fast.store.begin() as txn:
        [(_, cdr)] = list(iter_card_cdrs(txn, pair.fast.store, card_key(46, 1)))
    assert (cdr.duration, cdr.billed_seconds, cdr.cost, cdr.conf_id, cdr.acct_session_id) == (
        125, 125, cost, conf, "s1")


def test_the_lane_leaves_what_the_reference_logs_or_treats_specially(world, tmp_path):
    """Each of these is declined by the lane (None) and then decided by the reference."""
    pair = Pair(world, tmp_path)
    lane, cisco = pair.lane, pair.fast.client()
    n45 = world.number(45, 0)
    # a call that ran past its card's money (series 48 holds 0.90; 2 hours cost far more)
    overrun = accounting(world.number(48, 0), d.AcctStatus.STOP, conf_id="OVER", session_time=7200,
                         called="442079460000")
    declined = [
        (accounting(n45, d.AcctStatus.ACCOUNTING_ON), cisco),
        (accounting(n45, 7), cisco),  # Failed
        (accounting(n45, d.AcctStatus.START), cisco),  # no call identifier at all
        (accounting("45-000000999", d.AcctStatus.START, conf_id="X1", called="442079460000"), cisco),
        (accounting("45 000000000", d.AcctStatus.START, conf_id="X2", called="442079460000"), cisco),
        (accounting(n45, d.AcctStatus.START, conf_id="X3", called="*86"), cisco),  # not rateable
        (accounting(n45, d.AcctStatus.START, conf_id="X4", called="999123"), cisco),  # no rate
        (accounting(n45, d.AcctStatus.START, conf_id="X5", called="442079460000",
                    extra=[(d.PROXY_STATE, b"hop")]), cisco),
        (accounting(n45, d.AcctStatus.START, conf_id="X6", called="442079460000",
                    extra=[(d.MESSAGE_AUTHENTICATOR, bytes(16))]), cisco),
        (accounting(n45, d.AcctStatus.START, conf_id="X7\u00e9", called="442079460000"), cisco),
        (accounting(n45, d.AcctStatus.START, conf_id="X8", called="442079460000"), pair.fast.client("tenor-pin")),
        (accounting(n45, d.AcctStatus.START, conf_id="X9", called="442079460000", secret=b"wrong"), cisco),
        (overrun, cisco),
    ]
    for raw, client in declined:
        assert lane.decide(raw, client, SOURCE_IP) is None, raw
    assert lane.answered == 0
    assert dump(pair.fast) == dump(pair.ref)  # declining wrote nothing

    # An authorization that carried no call id is filed by card and number; its Start is adopted.
    pair.access(access_request(world, 45, 2, "442079460000", ""))
    start = accounting(world.number(45, 2), d.AcctStatus.START, conf_id="ADOPT", called="442079460000")
    assert lane.decide(start, cisco, SOURCE_IP) is None
    pair.account(start)
    pair.check()

    # A report after the Stop that bills no more is the lane's; a longer one amends the CDR, which
    # is the reference's job (UK: 60 s minimum, then 6 s steps, so 70 and 71 s both bill 72 s).
    common = dict(conf_id="LATE", called="442079460000")
    assert lane.decide(accounting(n45, d.AcctStatus.STOP, session_time=70, **common), cisco, SOURCE_IP)
    assert lane.decide(accounting(n45, d.AcctStatus.INTERIM_UPDATE, session_time=71, **common), cisco,
                       SOURCE_IP)
    assert lane.decide(accounting(n45, d.AcctStatus.INTERIM_UPDATE, session_time=80, **common), cisco,
                       SOURCE_IP) is None


# --- the arithmetic, against radcore.rating -------------------------------------------------------

rates = hyp.builds(
    rating.Rate, prefix=hyp.just("1"), price_per_minute=hyp.integers(0, 10**9),
    connection_fee=hyp.integers(0, 10**9), min_volume=hyp.integers(0, 3600), interval=hyp.integers(1, 600),
    grace=hyp.integers(0, 120))


@settings(max_examples=800, deadline=None)
@given(rates, hyp.integers(0, 10**7), hyp.integers(0, 2**32 - 1))
def test_the_lanes_cost_is_rating_cost(rate, tax_ppm, duration):
    from radcore._acctlane import cost

    assert cost(rate.price_per_minute, rate.connection_fee, rate.min_volume, rate.interval, rate.grace,
                tax_ppm, duration) == rating.cost(rate, duration, tax_ppm)


@settings(max_examples=800, deadline=None)
@given(rates, hyp.integers(0, 10**7), hyp.integers(-10**6, 10**13), hyp.integers(0, 86_400 * 7))
def test_the_lanes_max_duration_is_rating_max_duration(rate, tax_ppm, available, cap):
    from radcore._acctlane import max_duration

    assert max_duration(rate.price_per_minute, rate.connection_fee, rate.min_volume, rate.interval,
                        rate.grace, tax_ppm, available, cap) == rating.max_duration(rate, available, tax_ppm, cap)


def test_a_served_worker_reserves_and_settles_calls_in_the_write_lane(tmp_path):
    """A real server, one worker: the first call activates the card (Python path); the second call's
    number authorization, Start and Stop are answered by the write lane after its durable commit. A
    retransmitted Stop gets the identical bytes from the duplicate cache and charges nothing twice,
    and /metrics counts the lane's answers with the rest."""
    from helpers_server import UdpClient, metric_key
    from test_e2e_prepaid import SECRET as E2E_SECRET
    from test_e2e_prepaid import UK, provision, read_card, start_server

    pins = provision(tmp_path, quantity=1)
    secret = E2E_SECRET.encode()
    number = "45-000000000"

    def access(ident: int, conf: str) -> tuple[bytes, bytes]:
        authenticator = os.urandom(16)
        return packet.encode_access_request(ident, authenticator, [
            (d.USER_NAME, number.encode()), (d.NAS_IP_ADDRESS, b"\x7f\0\0\1"),
            (d.CALLED_STATION_ID, b"442079460000"), (CONF_VSA, f"h323-conf-id={conf}".encode())],
            secret, password=pins[0].encode()), authenticator

    def acct(ident: int, status: int, conf: str, seconds: int | None = None) -> bytes:
        attrs = [(d.USER_NAME, number.encode()), (d.NAS_IP_ADDRESS, b"\x7f\0\0\1"),
                 (d.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (d.ACCT_SESSION_ID, conf[:8].encode()),
                 (CONF_VSA, f"h323-conf-id={conf}".encode())]
        if seconds is not None:
            attrs.append((d.ACCT_SESSION_TIME, seconds.to_bytes(4, "big")))
        return packet.encode_accounting_request(ident, attrs, secret)

    with start_server(tmp_path, workers=1) as server, UdpClient() as nas:
        for ident, conf in ((1, "AAAA0001 1 1 1"), (2, "AAAA0002 2 2 2")):
            raw, authenticator = access(ident, conf)
            reply = packet.decode_response(nas.exchange(server.auth_port, raw), authenticator, secret)
            assert reply.code == d.Code.ACCESS_ACCEPT
            for status, seconds in ((d.AcctStatus.START, None), (d.AcctStatus.STOP, 95)):
                raw = acct(ident + 10 * status, status, conf, seconds)
                wire = nas.exchange(server.acct_port, raw)
                assert packet.decode_response(wire, raw[4:20], secret).code == d.Code.ACCOUNTING_RESPONSE
        assert nas.exchange(server.acct_port, raw) == wire  # the last Stop, retransmitted
        server.wait_metric("radcore_duplicates_total", 1)
        metrics = server.metrics()
        # Call 2's number authorization, Start and Stop, and call 1's Start and Stop (the first
        # Access-Request activated the card: a Python-path write).
        assert metrics["radcore_fast_answers_total"] == 5
        assert metrics[metric_key("radcore_replies_total", type="accounting_response")] == 4
        assert metrics[metric_key("radcore_replies_total", type="access_accept")] == 2
        assert metrics[metric_key("radcore_requests_received_total", type="accounting_request")] == 5
        assert metrics[metric_key("radcore_requests_received_total", type="access_request")] == 2
    card, cdrs = read_card(tmp_path, 0)
    assert [c.cost for c in cdrs] == [rating.cost(UK, 95)] * 2
    assert card.balance == 10_000_000 - 2 * rating.cost(UK, 95)
    assert (card.reserved, card.open_calls) == (0, 0)


def test_a_write_lane_failure_hands_its_part_of_the_batch_to_the_python_path(world):
    """If the write transaction cannot start (or commit), nothing it held is answered: every
    datagram comes back for the Python path, in arrival order, and the error is reported. With a
    working lane the same datagrams are settled in C, and their replies leave only after the commit."""
    from helpers_server import loopback_pair
    from radcore._acctlane import WriteLane
    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import ACCT

    class BrokenStore:
        cards = sessions = session_deadlines = cdrs = None

        def begin(self, write=False):
            raise OSError("No space left on device")

    with loopback_pair() as (server, nas):
        lane = Lane([(server, ACCT)], 8)
        errors = []
        lane.on_lane_error = errors.append
        raws = [accounting(world.number(45, i), d.AcctStatus.STOP, conf_id=f"FAIL{i}", session_time=70,
                           called="442079460000") for i in range(3)]
        for raw in raws:
            nas.sendto(raw, server.getsockname())
        time.sleep(0.05)  # loopback has delivered by now; this is only slack for a loaded machine
        assert lane.receive([0]) == 3
        handler = world.handler
        broken = WriteLane(BrokenStore(), handler.settlement, handler.lookups, world.clock)
        answered, rest = lane.serve(None, world.config, DuplicateCache(30), broken)
        assert answered == 0 and [r[0] for r in rest] == raws
        assert len(errors) == 1 and "No space left" in str(errors[0])
        balance = world.card(45, 0).balance
        cache = DuplicateCache(30)
        answered, rest = lane.serve(None, world.config, cache, handler.fast_write)
        assert (answered, lane.accounted, rest, len(cache)) == (3, 3, [], 3)
        assert world.card(45, 0).balance == balance - rating.cost(helpers_prepaid.UK, 70)  # committed
        assert lane.flush() == (3, [])
        nas.settimeout(3)
        replies = [nas.recv(4096) for _ in range(3)]
        assert sorted(r[1] for r in replies) == sorted(r[1] for r in raws)
