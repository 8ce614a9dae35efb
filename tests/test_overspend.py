"""Overspend: many calls on one card at once can never spend more than the card holds.

Number authorization *reserves* the cost of the granted time in the same transaction that decides
it, so parallel authorizations (distinct h323-conf-ids, a generous max_concurrent_calls) see each
other's holds. Checked two ways:

1. Over a real server: 2 to 50 number authorizations fired at once from separate sockets. The
   holds granted sum to no more than the balance; then every call reports a Stop with far more
   time than it was granted, and the balance ends at exactly zero or above, never below, with
   every micro-unit debited accounted for by a CDR.
2. In-process with hypothesis: random interleavings, several requests per batch (one LMDB
   transaction, as the server batches them), of authorizations, re-authorizations, Starts,
   Interims and Stops (overrunning the grant, out of order, Stop-only calls never authorized).
   After every batch: no negative balance or hold, the holds on the card equal the open calls'
   holds, every micro-unit that left the balance is a call's charge, and a batch that granted
   anything left the card with its holds covered by its balance.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field

import helpers_load as hl
import helpers_prepaid as hp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcore import dictionary as d
from radcore import packet
from radcore.clock import FixedClock
from radcore.config_file import load_config
from radcore.generation import generate_series
from radcore.handler import PrepaidHandler
from radcore.keys import KeyRing
from radcore.rating import Rate, cost, put_rate, put_rate_table
from radcore.store import (
    Card,
    CardStatus,
    RateTable,
    Series,
    Session,
    SessionState,
    Store,
    card_key,
    get_card,
    iter_card_cdrs,
    iter_session_range,
    put_card,
)

MAX_CALL = 150  # seconds: no single grant takes the whole card, so several calls get money


# ---------------------------------------------------------------------------------------------
# 1. Real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overspend")
    pins = hl.provision(tmp, quantity=60, face_balance=1_000_000, max_concurrent_calls=1000,
                        initial_status=CardStatus.ACTIVATED)
    config = hl.write_config(tmp, workers=2, prepaid={"max_call_seconds": MAX_CALL})
    with hl.prepaid_server(config) as proc:
        proc.pins, proc.dir = pins, tmp
        yield proc


def grant_cost(reply: packet.Packet) -> int:
    return hl.call_cost(hl.UK_NUMBER, hl.credit_time(reply))


@pytest.mark.parametrize("calls", [2, 3, 7, 20, 50])
def test_parallel_authorizations_never_grant_more_than_the_balance(server, calls):
    serial = calls  # one card per case
    user, pin = hl.number(serial), server.pins[serial]
    flights = [hl.auth_flight(user, pin, called=hl.UK_NUMBER, conf_id=f"par-{calls}-{n}", tag=f"par-{calls}-{n}")
               for n in range(calls)]
    with hl.Nas({hl.AUTH: server.auth_port, hl.ACCT: server.acct_port}, sockets=min(calls, 16),
                window=calls) as nas:
        assert nas.run(flights, deadline=_deadline(20)) == [], server.log()
        granted = [f for f in flights if f.reply.code == d.Code.ACCESS_ACCEPT]
        codes = {hl.return_code(f.reply) for f in flights if f.reply.code == d.Code.ACCESS_REJECT}
        assert codes <= {int(d.ReturnCode.INSUFFICIENT_BALANCE)}, codes
        total = sum(grant_cost(f.reply) for f in granted)
        assert granted and total <= 1_000_000
        # By hand: UK costs 0.05 + 0.002/s on a 60 s + 6 s grid, and no grant exceeds MAX_CALL =
        # 150 s (0.35). Of 1.00 two calls get 150 s, the third gets what 0.30 buys (0.25 after the
        # connection fee: 125 s, 120 s on the grid, 0.29), and the 0.01 left buys no minimum call.
        expected = [120, 150, 150] if calls >= 3 else [150] * calls
        assert sorted(hl.credit_time(f.reply) for f in granted) == expected
        assert all(grant_cost(f.reply) == cost(hl.UK, hl.credit_time(f.reply)) for f in granted)
        [(card, _)] = hl.read_cards(server.dir, [serial]).values()
        assert (card.balance, card.reserved, card.open_calls) == (1_000_000, total, len(granted))

        # Every granted call now reports three times its grant, plus Stop-only calls never
        # authorized; the card pays until it is empty and not one micro-unit more.
        stops = [hl.acct_flight(user, d.AcctStatus.STOP, f.tag, seconds=3 * hl.credit_time(f.reply))
                 for f in granted]
        stops += [hl.acct_flight(user, d.AcctStatus.STOP, f"stop-only-{calls}-{n}", seconds=400)
                  for n in range(2)]
        assert nas.run(stops, deadline=_deadline(20)) == [], server.log()
    [(card, cdrs)] = hl.read_cards(server.dir, [serial]).values()
    assert card.balance >= 0 and card.reserved == 0 and card.open_calls == 0
    assert sum(c.cost for c in cdrs) == 1_000_000 - card.balance
    assert len(cdrs) == len(stops)
    for cdr in cdrs:
        assert 0 <= cdr.cost <= hl.call_cost(hl.UK_NUMBER, cdr.duration)
    assert card.balance == 0, "the overrunning calls used up everything"
    assert card.status == CardStatus.USED


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


# ---------------------------------------------------------------------------------------------
# 2. In-process, random interleavings


RATE = Rate(prefix="44", price_per_minute=120_000, connection_fee=50_000, min_volume=60, interval=6)
FREE_START = Rate(prefix="1", price_per_minute=30_000, connection_fee=0, min_volume=1, interval=1, grace=5)
NUMBERS = {"442079460000": RATE, "12125550100": FREE_START}
SECRET = hp.SECRET


@dataclass
class Bench:
    handler: PrepaidHandler
    store: Store
    client: object
    clock: FixedClock
    used: int = 0
    ids: list = field(default_factory=lambda: [0])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overspend-inproc")
    conf = tmp / "radcore.toml"
    conf.write_text(textwrap.dedent(f"""
        [server]
        data_dir = "{tmp / 'data'}"
        workers = 1
        auth_listen = "127.0.0.1:0"
        acct_listen = "127.0.0.1:0"
        metrics_listen = ""

        [prepaid]
        max_call_seconds = {MAX_CALL}

        [[clients]]
        name = "gw"
        network = "127.0.0.1"
        secret = "{SECRET.decode()}"
        profile = "cisco"
        """))
    config = load_config(conf)
    store = Store(tmp / "data", map_size=1 << 30)
    keyring = KeyRing.load_or_create(str(tmp / "radcore.key"))
    with store.begin(write=True) as txn:
        put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
        for rate in NUMBERS.values():
            put_rate(txn, store, "retail", rate)
    generate_series(store, keyring, Series(number=45, name="overspend", face_balance=1, quantity=4000,
                                           pin_length=10, rate_table="retail", max_concurrent_calls=60,
                                           initial_status=CardStatus.ACTIVATED),
                    clock=lambda: hp.T0, chunk_size=4000)
    clock = FixedClock(hp.T0)
    handler = PrepaidHandler(config, clock=clock, store=store, keyring=keyring)
    bench = Bench(handler, store, config.clients[0], clock)
    bench.keyring = keyring
    yield bench
    store.close()


def _pin(bench: Bench, serial: int) -> str:
    key = card_key(45, serial)
    with bench.store.begin() as txn:
        return bench.keyring.decrypt_pin(get_card(txn, bench.store, key).pin_blob, key)


def _auth(bench, user, pin, conf, called):
    bench.ids[0] += 1
    raw = hl.access_request(bench.ids[0], user, pin, called=called, conf_id=conf, secret=SECRET.decode())
    return packet.parse_request(raw, SECRET, True)


def _acct(bench, user, status, conf, called, seconds):
    bench.ids[0] += 1
    raw = hl.accounting_request(bench.ids[0], user, status, conf, session_time=seconds, called=called,
                                secret=SECRET.decode())
    return packet.parse_request(raw, SECRET, True)


def _state(bench: Bench, serial: int) -> tuple[Card, list[Session], list]:
    key = card_key(45, serial)
    prefix = f"192.0.2.10\0{serial}-".encode()  # session key: NAS + NUL + h323-conf-id
    with bench.store.begin() as txn:
        card = get_card(txn, bench.store, key)
        sessions = []
        for skey, session in iter_session_range(txn, bench.store, prefix, tombstones=True):
            if not skey.startswith(prefix):
                break
            sessions.append(session)
        cdrs = [c for _, c in iter_card_cdrs(txn, bench.store, key)]
    return card, sessions, cdrs


def _check(bench: Bench, serial: int, initial: int) -> Card:
    card, sessions, cdrs = _state(bench, serial)
    open_ = [s for s in sessions if s.state != SessionState.STOPPED]
    assert card.balance >= 0 and card.reserved >= 0
    assert card.reserved == sum(s.reserved for s in open_)
    assert card.open_calls == len(open_)
    assert initial - card.balance == sum(s.charged for s in sessions)
    assert sum(c.cost for c in cdrs) == sum(s.charged for s in sessions if s.state == SessionState.STOPPED)
    for s in sessions:
        assert s.charged <= cost(NUMBERS[s.called], s.last_session_time)
    return card


# A call n has one true duration (often far beyond its grant); its Interims report a fraction of it
# and its Stop all of it, in any order and any number of times, as a NAS's retransmissions and
# reordering would deliver them.
op = st.one_of(
    st.tuples(st.just("auth"), st.integers(0, 49), st.sampled_from(sorted(NUMBERS))),
    st.tuples(st.sampled_from([d.AcctStatus.START, d.AcctStatus.INTERIM_UPDATE, d.AcctStatus.STOP]),
              st.integers(0, 49), st.floats(0, 1)),
    st.tuples(st.just("stop-only"), st.integers(50, 52), st.floats(0, 1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(balance=st.integers(0, 3_000_000), calls=st.integers(2, 50),
       durations=st.lists(st.integers(0, 3 * MAX_CALL + 200), min_size=53, max_size=53),
       batches=st.lists(st.lists(op, min_size=1, max_size=8), min_size=1, max_size=25))
def test_random_interleavings_never_overspend(bench, balance, calls, durations, batches):
    bench.used += 1
    serial = 1000 + bench.used  # a fresh card per example (hypothesis' shrinking runs hundreds)
    key = card_key(45, serial)
    with bench.store.begin(write=True) as txn:
        card = get_card(txn, bench.store, key)
        card.balance = balance
        put_card(txn, bench.store, key, card)
    user, pin = hl.number(serial), _pin(bench, serial)
    called_of: dict[str, str] = {}
    for batch in batches:
        requests, auths = [], 0
        for kind, n, arg in batch:
            conf = f"{serial}-{n % calls if n < 50 else n}"
            if kind == "auth":
                called_of.setdefault(conf, arg)
                requests.append(_auth(bench, user, pin, conf, called_of[conf]))
                auths += 1
            else:
                status = d.AcctStatus.STOP if kind == "stop-only" else kind
                called = called_of.setdefault(conf, "442079460000")
                n = n % calls if n < 50 else n
                seconds = durations[n] if status == d.AcctStatus.STOP else int(durations[n] * arg)
                requests.append(_acct(bench, user, status, conf, called, seconds))
        before = _check(bench, serial, balance)
        replies = bench.handler.handle([(req, bench.client, ("127.0.0.1", 40000)) for req in requests])
        after = _check(bench, serial, balance)
        granted = [(req, rep) for req, rep in zip(requests, replies)
                   if req.code == d.Code.ACCESS_REQUEST and rep[0] == d.Code.ACCESS_ACCEPT]
        if granted and auths == len(requests):
            # Each grant (new call, or a re-authorization replacing its own hold) fits what is not
            # yet held, so the holds the batch added fit what was free before it.
            assert after.reserved - before.reserved <= before.balance - before.reserved
            assert after.reserved <= after.balance == before.balance
        for req, rep in granted:
            seconds = int(packet.vsa_text(dict(rep[1])[d.vsa_key(d.VENDOR_CISCO, d.H323_CREDIT_TIME)],
                                          d.H323_CREDIT_TIME))
            assert 0 < seconds <= MAX_CALL
    # Every call ends with a Stop far beyond anything granted: the card pays what it has, no more.
    bench.clock.advance(1)
    final = [_acct(bench, user, d.AcctStatus.STOP, conf, called, durations[int(conf.split("-")[1])])
             for conf, called in called_of.items()]
    bench.handler.handle([(req, bench.client, ("127.0.0.1", 40000)) for req in final])
    card = _check(bench, serial, balance)
    assert card.reserved == 0 and card.open_calls == 0 and card.balance >= 0


def test_overrun_of_one_call_cannot_push_the_card_below_zero(bench):
    """By hand: of 1.00, calls A and B hold 0.35 each (150 s). A overruns to 360 s (0.77): its
    hold is released and 0.77 debited, leaving 0.23 to cover B's 0.35 hold. B's Stop at 150 s
    owes 0.35 and gets the 0.23 there is; the card ends at 0, not at -0.12."""
    serial = 399
    key = card_key(45, serial)
    with bench.store.begin(write=True) as txn:
        card = get_card(txn, bench.store, key)
        card.balance = 1_000_000
        put_card(txn, bench.store, key, card)
    user, pin = hl.number(serial), _pin(bench, serial)
    a, b = (bench.handler.handle([(_auth(bench, user, pin, conf, "442079460000"), bench.client,
                                   ("127.0.0.1", 1))])[0] for conf in ("399-A", "399-B"))
    assert a[0] == b[0] == d.Code.ACCESS_ACCEPT
    assert _state(bench, serial)[0].reserved == 2 * 350_000
    bench.handler.handle([(_acct(bench, user, d.AcctStatus.STOP, "399-A", "442079460000", 360), bench.client,
                           ("127.0.0.1", 1))])
    card = _check(bench, serial, 1_000_000)
    assert (card.balance, card.reserved) == (230_000, 350_000)
    bench.handler.handle([(_acct(bench, user, d.AcctStatus.STOP, "399-B", "442079460000", 150), bench.client,
                           ("127.0.0.1", 1))])
    card, _, cdrs = _state(bench, serial)
    assert (card.balance, card.reserved, card.status) == (0, 0, CardStatus.USED)
    assert sorted(c.cost for c in cdrs) == [230_000, 770_000]


def test_a_longer_report_after_the_stop_is_billed_in_the_cdr_or_not_at_all(bench):
    """Cisco reports both legs of a call under one h323-conf-id; the answer leg (with the IVR time)
    is longer, and its Stop may arrive second. Whatever radcore charges must be in the CDR."""
    serial = 398
    key = card_key(45, serial)
    with bench.store.begin(write=True) as txn:
        card = get_card(txn, bench.store, key)
        card.balance = 5_000_000
        put_card(txn, bench.store, key, card)
    user = hl.number(serial)
    for seconds in (185, 200):  # originate leg, then answer leg
        bench.handler.handle([(_acct(bench, user, d.AcctStatus.STOP, "legs", "442079460000", seconds),
                               bench.client, ("127.0.0.1", 1))])
    card, _, cdrs = _state(bench, serial)
    assert 5_000_000 - card.balance == sum(c.cost for c in cdrs)
    assert len(cdrs) == 1 and cdrs[0].duration == 200

