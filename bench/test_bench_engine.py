"""Per-operation cost of the prepaid engine behind the codec: rating, LMDB records, and whole batches.

Where test_bench_codec.py times one packet through the codec and test_bench_e2e.py a real server over
UDP, these time the layers in between, in-process: the rating arithmetic and the longest-prefix
lookup, one card or session read and rewritten inside a write transaction, and a worker's batch of
64 requests through the handler (card authentication in the C lane against the Python path with
either codec, and accounting Start+Stop pairs that settle new calls every round). Stores are opened
with sync=False: fsync is the e2e benchmark's business, here it would only add disk noise.

Speed is never asserted; correctness is: implementations compared give identical results (the same
Rate, the same reply bytes), records round-trip, and the money moved is exactly what the rate says.

    .venv/bin/python -m pytest bench/test_bench_engine.py                    # compare within a group
    .venv/bin/python -m pytest bench/test_bench_engine.py --benchmark-disable # smoke test, one call each
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

import pytest

from radcore import dictionary as d
from radcore import fastpath, packet, rating
from radcore.records import CardStatus, RateTable, SessionState
from radcore.store import (Card, Session, Store, card_key, get_card, get_session, iter_card_cdrs, put_card,
                           put_session)

# helpers_prepaid lives in tests/, which pytest puts on sys.path only for tests collected there.
TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import helpers_prepaid
from helpers_prepaid import SECRET, T0, UK

BATCH = 64
SOURCE = ("127.0.0.1", 40000)  # the cisco-gw client of helpers_prepaid
NAS = bytes(map(int, helpers_prepaid.NAS_IP.split(".")))
CONF_VSA = d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID)


def _world(tmp_path: Path) -> helpers_prepaid.World:
    """helpers_prepaid.make_world with its Store opened sync=False (no fsync per commit)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(helpers_prepaid, "Store", functools.partial(Store, sync=False))
        return helpers_prepaid.make_world(tmp_path)


# --- 1. rating --------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="rating-arithmetic")
def test_rating_cost(benchmark):
    """rating.cost of a 125 s call on a 60/6 rate with a connection fee and 20% tax: run once per
    Interim-Update and Stop, so it sits on every accounting request."""
    assert benchmark(rating.cost, UK, 125, 200_000) == 362_400  # (50_000 + 126 s * 2_000) * 1.2


@pytest.mark.benchmark(group="rating-arithmetic")
def test_rating_max_duration(benchmark):
    """rating.max_duration, the closed-form credit time of a number authorization (Session-Timeout)."""
    available, tax = 10_000_000, 200_000
    seconds = benchmark(rating.max_duration, UK, available, tax, 7200)
    assert rating.cost(UK, seconds, tax) <= available < rating.cost(UK, seconds + 1, tax)


@pytest.fixture(scope="module")
def rate_table(tmp_path_factory):
    """A 10,000-prefix table (2 to 7 digits, random but seeded) and a 12-digit number whose longest
    match is a 6-digit prefix with shorter rated prefixes of it on the way, as in carrier decks."""
    rng = random.Random(20261126)
    prefixes = {str(rng.randrange(10 ** (n - 1), 10 ** n)) for n in range(2, 8) for _ in range(1700)}
    prefixes = set(sorted(prefixes)[:9_997])
    target = next(p for p in sorted(prefixes) if len(p) == 6)
    prefixes |= {target[:2], target[:4], target}
    while len(prefixes) < 10_000:
        prefixes.add(str(rng.randrange(10**6, 10**7)))
    number = target + "".join(rng.choice("0123456789") for _ in range(6))
    expected = max((p for p in prefixes if number.startswith(p)), key=len)
    store = Store(tmp_path_factory.mktemp("rates"), map_size=1 << 28, sync=False)
    with store.begin(write=True) as txn:
        rating.put_rate_table(txn, store, RateTable(name="big", currency="USD"))
        for i, prefix in enumerate(sorted(prefixes)):
            rating.put_rate(txn, store, "big", rating.Rate(prefix, 10_000 + i, 0, 30, 6), bump=False)
    txn = store.begin()
    try:
        assert len(prefixes) == 10_000 and len(expected) == 6
        yield store, txn, number, expected
    finally:
        txn.abort()
        store.close()


@pytest.mark.benchmark(group="rating-find-rate")
@pytest.mark.parametrize("variant", ["probe-every-length", "with-rate-prefixes"])
def test_find_rate_10k_prefixes(benchmark, rate_table, variant):
    """find_rate for a 12-digit number: a cursor seek for each of 13 lengths, or (with the cached
    rate_prefixes set the handler keeps per config_version) seeks only at the lengths that exist."""
    store, txn, number, expected = rate_table
    prefixes = rating.rate_prefixes(txn, store, "big")
    assert prefixes is not None and len(prefixes) == 10_000
    plain = rating.find_rate(txn, store, "big", number, T0)
    fast = rating.find_rate(txn, store, "big", number, T0, prefixes)
    assert plain == fast and plain is not None and plain.prefix == expected
    arg = prefixes if variant == "with-rate-prefixes" else None
    assert benchmark(rating.find_rate, txn, store, "big", number, T0, arg) == plain


# --- 2. store and records ---------------------------------------------------------------------------

CARD = Card(status=CardStatus.ACTIVATED, balance=10_000_000, activated_at=T0, fees_paid_until=T0,
            last_use=T0, pin_digest=bytes(range(32)), pin_blob=bytes(range(56)))
SESSION = Session(card_key=card_key(45, 1122333), state=SessionState.STARTED, reserved=3_000_000,
                  charged=302_000, opened_at=T0, deadline=T0 + 7260, last_session_time=125,
                  price_per_minute=120_000, connection_fee=50_000, min_volume=60, interval=6,
                  tax_ppm=200_000, prefix="44", called="442079460000", acct_session_id="0000ABCD",
                  conf_id="3A2B1C0D 11223344 55667788 99AABBCC", nas=helpers_prepaid.NAS_IP)


@pytest.fixture
def write_txn(tmp_path):
    """A sync=False store holding CARD, and one write transaction left open for the benchmark (aborted)."""
    store = Store(tmp_path / "store", map_size=1 << 28, sync=False)
    with store.begin(write=True) as txn:
        put_card(txn, store, SESSION.card_key, CARD)
    txn = store.begin(write=True)
    try:
        yield store, txn
    finally:
        txn.abort()
        store.close()


@pytest.mark.benchmark(group="store-lmdb")
def test_store_get_put_card(benchmark, write_txn):
    """get_card + put_card of one card, debiting 1 micro-unit: what settling a call does to the card."""
    store, txn = write_txn
    key, calls = SESSION.card_key, [0]

    def run():
        card = get_card(txn, store, key)
        card.balance -= 1
        put_card(txn, store, key, card)
        calls[0] += 1

    benchmark(run)
    assert get_card(txn, store, key).balance == CARD.balance - calls[0]


@pytest.mark.benchmark(group="store-lmdb")
def test_store_put_session(benchmark, write_txn):
    """put_session of an open call (its value plus the deadline index entry), rewriting the same key."""
    store, txn = write_txn
    skey = b"10.1.1.1\x00" + SESSION.conf_id.encode()
    benchmark(put_session, txn, store, skey, SESSION)
    assert get_session(txn, store, skey) == SESSION


@pytest.mark.benchmark(group="records-codec")
@pytest.mark.parametrize("record", [CARD, SESSION], ids=["card", "session"])
def test_record_pack_unpack(benchmark, record):
    """pack then unpack of a Card (fixed struct + pin blob) or a Session (struct + five strings)."""
    cls = type(record)
    assert benchmark(lambda: cls.unpack(record.pack())) == record


# --- 3. batch: card authentication -------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_batch(tmp_path_factory):
    """64 activated cards and one Access-Request each (right PIN, Message-Authenticator, no dialled
    number: the plain card authentication the C lane answers), with seeded authenticators."""
    world = _world(tmp_path_factory.mktemp("auth"))
    world.add_series(45, quantity=BATCH, initial_status=CardStatus.ACTIVATED, face_balance=12_345_678)
    rng = random.Random(45)
    raws = [packet.encode_access_request(
        i, rng.randbytes(16),
        [(d.USER_NAME, world.number(45, i).encode()), (d.NAS_IP_ADDRESS, NAS),
         (CONF_VSA, f"h323-conf-id={rng.getrandbits(128):032X}".encode())],
        SECRET, password=world.pins[45][i].encode()) for i in range(BATCH)]
    return world, world.client(), raws


def _python_batch(world, client, raws, codec):
    """What a worker does with a batch the lane declined: parse_batch, handler.handle, encode_responses."""
    items = [(raw, client.secret, client.require_message_authenticator) for raw in raws]
    handle, parse_batch, encode_responses = world.handler.handle, codec.parse_batch, codec.encode_responses

    def run():
        reqs = parse_batch(items)
        out = handle([(req, client, SOURCE) for req in reqs])
        return encode_responses([(req, r[0], r[1], client.secret) for req, r in zip(reqs, out)])

    return run


def _lane_batch(world, client, raws):
    lane = world.handler.fast_answer
    if lane is None:
        pytest.skip("the C lane (radcore._lane, radcore._cardauth) is not built")
    decide = lane.decide
    return lambda: [decide(raw, client) for raw in raws]


def _check_auth(world, client, raws, wires):
    """Identical bytes from all three paths, every one a verified Access-Accept."""
    reference = _python_batch(world, client, raws, packet)()
    assert wires == reference == _python_batch(world, client, raws, fastpath)()
    if world.handler.fast_answer is not None:
        assert _lane_batch(world, client, raws)() == reference
    for raw, wire in zip(raws, wires):
        assert packet.decode_response(wire, raw[4:20], SECRET).code == d.Code.ACCESS_ACCEPT


@pytest.mark.benchmark(group="batch-card-auth")
def test_card_auth_batch_c_lane(benchmark, auth_batch):
    """CardAuthLane.decide per datagram: C walk, Message-Authenticator, PIN digest, card read, reply.
    Each decide opens its own read transaction; Lane.serve in the server shares one per batch."""
    world, client, raws = auth_batch
    run = _lane_batch(world, client, raws)
    answered = world.handler.fast_answer.answered
    wires = benchmark(run)
    assert None not in wires and world.handler.fast_answer.answered - answered >= BATCH
    _check_auth(world, client, raws, wires)


@pytest.mark.benchmark(group="batch-card-auth")
@pytest.mark.parametrize("codec", [fastpath, packet], ids=["python-handler-cython-codec",
                                                          "python-handler-reference-codec"])
def test_card_auth_batch_python(benchmark, auth_batch, codec):
    """The Python path for the same batch: parse_batch, PrepaidHandler.handle (read pass only),
    encode_responses, with radcore.fastpath (Cython when built) or radcore.packet (pure Python)."""
    world, client, raws = auth_batch
    if codec is fastpath and fastpath.IMPLEMENTATION != "cython":
        pytest.skip("radcore._fastpath is not built")
    _check_auth(world, client, raws, benchmark(_python_batch(world, client, raws, codec)))


# --- 4. batch: accounting -----------------------------------------------------------------------------

@pytest.mark.benchmark(group="batch-accounting")
@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest.mark.parametrize("path", ["c-write-lane", "python-handler"])
def test_accounting_batch_start_stop(benchmark, tmp_path, path, signed):
    """64 Start+Stop pairs (64 cards, h323-conf-id, 20% tax) in one write transaction: rate the
    unannounced call, open its session, settle, close it, append its CDR. `c-write-lane`: the worker's
    C lane (WriteLane.run_batch, as Lane.serve runs it); `python-handler`: parse_batch (fastpath),
    PrepaidHandler.handle and encode_responses. `signed`: every request carries a Message-Authenticator
    (RFC 3579), as some switches send. Every round uses fresh conf-ids, so every round settles 64 new
    calls; requests are built in the untimed setup; the money is asserted exactly."""
    world = _world(tmp_path)
    if path == "c-write-lane" and world.handler.fast_write is None:
        pytest.skip("the C lanes (radcore._lane, radcore._acctlane) are not built")
    world.add_series(46, quantity=BATCH, initial_status=CardStatus.ACTIVATED, face_balance=10**15,
                     tax_profile="vat20")
    client, keys = world.client(), [card_key(46, i) for i in range(BATCH)]
    times = [30 + 7 * i for i in range(BATCH)]  # 30..471 s: below, at and past the 60 s minimum
    per_round = sum(rating.cost(UK, t, 200_000) for t in times)
    state = {"round": 0, "raws": []}

    def request(i: int, status: int, conf: str, extra: list) -> bytes:
        raw = packet.encode_accounting_request(i & 0xFF, [
            (d.USER_NAME, world.number(46, i).encode()), (d.NAS_IP_ADDRESS, NAS),
            (d.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (d.ACCT_SESSION_ID, conf[:8].encode()),
            (d.CALLED_STATION_ID, b"442079460000"), (CONF_VSA, f"h323-conf-id={conf}".encode()),
            *extra], SECRET)
        return helpers_prepaid.signed_accounting(raw) if signed else raw

    def setup():
        state["round"] += 1
        raws = []
        for i, t in enumerate(times):
            conf = f"{state['round']:08X} {i:08X} 55667788 99AABBCC"
            raws.append(request(i, d.AcctStatus.START, conf, []))
            raws.append(request(i, d.AcctStatus.STOP, conf, [(d.ACCT_SESSION_TIME, t.to_bytes(4, "big"))]))
        state["raws"] = raws
        return ([(raw, SECRET, client.require_message_authenticator) for raw in raws],), {}

    handle = world.handler.handle

    def run(items):
        if path == "c-write-lane":
            return world.handler.fast_write.run_batch([(raw, client, SOURCE[0]) for raw, _, _ in items])
        reqs = fastpath.parse_batch(items)
        out = handle([(req, client, SOURCE) for req in reqs])
        return fastpath.encode_responses([(req, r[0], r[1], SECRET) for req, r in zip(reqs, out)])

    def balances() -> int:
        return sum(world.card(46, i).balance for i in range(BATCH))

    before = balances()
    wires = benchmark.pedantic(run, setup=setup, rounds=200, warmup_rounds=5)
    rounds = state["round"]
    assert len(wires) == 2 * BATCH
    for raw, wire in zip(state["raws"], wires):
        assert packet.decode_response(wire, raw[4:20], SECRET).code == d.Code.ACCOUNTING_RESPONSE
    with world.store.begin() as txn:
        cdrs = [c for key in keys for _, c in iter_card_cdrs(txn, world.store, key)]
    assert len(cdrs) == rounds * BATCH and world.handler.settlement.orphans == 0
    assert before - balances() == sum(c.cost for c in cdrs) == rounds * per_round
    benchmark.extra_info.update(requests=2 * BATCH, calls_settled=rounds * BATCH)
    if path == "c-write-lane":
        assert world.handler.fast_write.answered == 2 * BATCH * rounds  # none left to the Python path


# --- 5. batch: number authorization ------------------------------------------------------------------

@pytest.mark.benchmark(group="batch-number-auth")
@pytest.mark.parametrize("path", ["c-write-lane", "python-handler"])
def test_number_auth_batch(benchmark, tmp_path, path):
    """64 number authorizations (64 cards, right PIN, Called-Station-Id, fresh h323-conf-id) in one
    write transaction: rate the number, compute the longest affordable call, reserve its cost, open
    the session, write the Access-Accept. Every round authorizes 64 new calls; each reply is checked
    as an Access-Accept and the holds on the cards as the sum of the sessions' reservations."""
    world = _world(tmp_path)
    if path == "c-write-lane" and world.handler.fast_write is None:
        pytest.skip("the C lanes (radcore._lane, radcore._acctlane) are not built")
    world.add_series(47, quantity=BATCH, initial_status=CardStatus.ACTIVATED, face_balance=10**15,
                     tax_profile="vat20", max_concurrent_calls=65535)
    client = world.client()
    rng = random.Random(47)
    state = {"raws": [], "rounds": 0}

    def setup():
        state["rounds"] += 1
        raws = [packet.encode_access_request(
            i, rng.randbytes(16),
            [(d.USER_NAME, world.number(47, i).encode()), (d.NAS_IP_ADDRESS, NAS),
             (d.CALLED_STATION_ID, b"442079460000"),
             (CONF_VSA, f"h323-conf-id={rng.getrandbits(128):032X}".encode())],
            SECRET, password=world.pins[47][i].encode()) for i in range(BATCH)]
        state["raws"] = raws
        return (raws,), {}

    def run(raws):
        if path == "c-write-lane":
            return world.handler.fast_write.run_batch([(raw, client, SOURCE[0]) for raw in raws])
        return _python_batch(world, client, raws, fastpath)()

    wires = benchmark.pedantic(run, setup=setup, rounds=200, warmup_rounds=5)
    assert None not in wires
    for raw, wire in zip(state["raws"], wires):
        assert packet.decode_response(wire, raw[4:20], SECRET).code == d.Code.ACCESS_ACCEPT
    with world.store.begin() as txn:
        held = sum(get_session(txn, world.store, key).reserved for key, _ in txn.cursor(db=world.store.sessions))
        cards = [get_card(txn, world.store, card_key(47, i)) for i in range(BATCH)]
    assert held == sum(c.reserved for c in cards) > 0
    assert sum(c.open_calls for c in cards) == state["rounds"] * BATCH  # one new call per card per round
    benchmark.extra_info.update(requests=BATCH)
