"""The C card-authentication lane (radcore._cardauth) against the Python reference path.

The lane may decline anything (the Python path then decides), but whatever it answers must be the
exact bytes the reference would send for the same request in the same store state: these tests
generate cards in every state, requests in many spellings, and compare. They also check that the
lane does answer the plain case, so the comparison is never vacuous.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcore import dictionary as d
from radcore import fastpath, packet
from radcore.errors import Invalid, PacketError
from radcore.rating import put_rate_table
from radcore.records import CardStatus, RateTable, SeriesStatus, parse_card_number
from radcore.replies import format_amount
from radcore.server import NoReply
from radcore.store import card_key, get_card, get_series, put_card, put_series

from helpers_prepaid import NAS_IP, SECRET, T0, make_world

pytestmark = pytest.mark.skipif(fastpath.load_lane() is None, reason="the C lane is built on Linux only")

EXTRA_CLIENTS = """
[[clients]]
name = "generic-gw"
network = "127.0.0.4"
secret = "{secret}"
profile = "generic"

[[clients]]
name = "lax"
network = "127.0.0.5"
secret = "{secret}"
profile = "cisco"
require_message_authenticator = false

[profiles.cisco-redirect]
base = "cisco"
number_attribute = "h323-redirect-number"

[[clients]]
name = "redirect-gw"
network = "127.0.0.6"
secret = "{secret}"
profile = "cisco-redirect"
""".format(secret=SECRET.decode())

CLIENTS = ("cisco-gw", "tenor", "tenor-pin", "generic-gw", "lax", "redirect-gw")


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path, EXTRA_CLIENTS)


def reference(world, raw: bytes, client) -> bytes | None:
    """What the Python path sends: parse, decide in the handler, encode; None for silence."""
    try:
        req = packet.parse_request(raw, client.secret, client.require_message_authenticator)
    except PacketError:
        return None
    [reply] = world.handler.handle([(req, client, ("127.0.0.1", 40000))])
    if reply is None or isinstance(reply, NoReply):
        return None
    return packet.encode_response(req, reply[0], reply[1], client.secret)


def request(*, user: bytes | None, pin: bytes | None, ma: bool = True, called: bytes = b"",
            chap: bool = False, extra: list | None = None, proxy: bool = False) -> bytes:
    attrs = []
    if user is not None:
        attrs.append((d.USER_NAME, user))
    attrs.append((d.NAS_IP_ADDRESS, bytes(map(int, NAS_IP.split(".")))))
    if called:
        attrs.append((d.CALLED_STATION_ID, called))
    if chap:
        attrs.append((d.CHAP_PASSWORD, b"\x01" + os.urandom(16)))
    if proxy:
        attrs.append((d.PROXY_STATE, b"hop-1"))
    attrs.extend(extra or [])
    return packet.encode_access_request(random.randrange(256), os.urandom(16), attrs, SECRET,
                                        password=pin, message_authenticator=ma)


def test_lane_answers_a_plain_card_authentication_exactly_as_the_reference(world):
    world.add_series(45, quantity=2, initial_status=CardStatus.ACTIVATED, face_balance=12_345_678,
                     language="es")
    lane = world.handler.fast_answer
    raw = request(user=b"45-000000001", pin=world.pins[45][1].encode())
    fast = lane.decide(raw, world.client())
    assert fast is not None and lane.answered == 1
    assert fast == reference(world, raw, world.client())
    reply = packet.decode_response(fast, raw[4:20], SECRET)
    assert reply.code == d.Code.ACCESS_ACCEPT
    amount = dict(reply.attributes)[d.vsa_key(d.VENDOR_CISCO, d.H323_CREDIT_AMOUNT)]
    assert packet.vsa_text(amount, d.H323_CREDIT_AMOUNT) == "12.34"


def test_lane_leaves_writes_and_refusals_to_the_reference(world):
    """A pending card (activated on first use), a wrong PIN (counted), a dialled number (a
    reservation), CHAP, PIN-only, Proxy-State, a missing Message-Authenticator: all declined."""
    world.add_series(45, quantity=3, initial_status=CardStatus.PENDING)
    world.add_series(46, quantity=3, initial_status=CardStatus.ACTIVATED)
    lane, cisco = world.handler.fast_answer, world.client()
    pin = world.pins[46][0].encode()
    declined = [
        (request(user=b"45-000000000", pin=world.pins[45][0].encode()), cisco),
        (request(user=b"46-000000000", pin=b"0000000000"), cisco),
        (request(user=b"46-000000000", pin=pin, called=b"442079460000"), cisco),
        (request(user=b"46-000000000", pin=None, chap=True), cisco),
        (request(user=pin, pin=None), world.client("tenor-pin")),
        (request(user=b"46-000000000", pin=pin, proxy=True), cisco),
        (request(user=b"46-000000000", pin=pin, ma=False), cisco),
        (request(user=b"46 000000000", pin=pin), cisco),
        (request(user=b"46-000000000", pin=pin, extra=[(d.vsa_key(d.VENDOR_CISCO, d.H323_REDIRECT_NUMBER),
                                                         b"h323-redirect-number=4420")]),
         world.client("redirect-gw")),
    ]
    for raw, client in declined:
        assert lane.decide(raw, client) is None
    assert lane.answered == 0
    # Without the redirect-number profile that VSA is not a dialled number, and without a required
    # Message-Authenticator its absence is fine: both are plain card authentications.
    assert lane.decide(request(user=b"46-000000000", pin=pin, extra=[
        (d.vsa_key(d.VENDOR_CISCO, d.H323_REDIRECT_NUMBER), b"h323-redirect-number=4420")]), cisco) is not None
    assert lane.decide(request(user=b"46-000000000", pin=pin, ma=False), world.client("lax")) is not None


def _scramble(world, rng: random.Random, series: int, serial: int) -> None:
    """Put a card into a random state, the way fees, calls and lockouts leave cards."""
    key = card_key(series, serial)
    with world.store.begin(write=True) as txn:
        card = get_card(txn, world.store, key)
        card.status = rng.choice([CardStatus.ACTIVATED] * 5 + list(CardStatus))
        card.balance = rng.choice([0, -5, 1, 9_999, 10_000, 1_000_000, rng.randrange(10**12)])
        card.reserved = rng.choice([0, 0, 0, card.balance, rng.randrange(10**7)])
        card.failed_pins = rng.choice([0, 0, 0, 1, 2])
        card.locked_until = rng.choice([0, 0, 0, T0 - 1, T0, T0 + 1])
        card.expires_at = rng.choice([0, 0, T0 - 1, T0, T0 + 1, T0 + 86_400])
        put_card(txn, world.store, key, card)


def _heal(world, rng: random.Random, series: int, serial: int) -> None:
    """Back to a card that may call: activated, money on it, no lockout, no failed PINs."""
    key = card_key(series, serial)
    with world.store.begin(write=True) as txn:
        card = get_card(txn, world.store, key)
        card.status, card.failed_pins, card.locked_until, card.expires_at = CardStatus.ACTIVATED, 0, 0, 0
        card.balance, card.reserved = rng.randrange(1, 10**11), 0
        put_card(txn, world.store, key, card)


def _spellings(rng: random.Random, series: int, serial: int) -> list[bytes]:
    plain = f"{series}-{serial:09d}"
    return [plain.encode(), plain.replace("-", "").encode(), f"0{plain}".encode(), f" {plain}".encode(),
            f"{series}--{serial:09d}".encode(), f"{series}-{serial:08d}".encode(), "٤٥-000000001".encode(),
            rng.choice([b"", b"-", b"123456789", b"99999-999999999", b"100000-000000001"])]


def test_lane_matches_the_reference_on_generated_traffic(world):
    """Every answer the lane gives equals the reference's, across card states, profiles, series
    settings and request spellings; and the lane answers a fair share of the plain cases."""
    rng = random.Random(20261126)
    world.add_series(45, quantity=8, initial_status=CardStatus.ACTIVATED, face_balance=5_000_000)
    with world.store.begin(write=True) as txn:
        put_rate_table(txn, world.store, RateTable(name="euro", currency="EUR"))
    world.add_series(7, quantity=8, initial_status=CardStatus.ACTIVATED, currency="EUR", language="de",
                     face_balance=123_456_789, rate_table="euro")
    world.add_series(99_999, quantity=4, initial_status=CardStatus.ACTIVATED)
    world.add_series(12, quantity=4, initial_status=CardStatus.PENDING)
    with world.store.begin(write=True) as txn:  # a stopped series
        stopped = get_series(txn, world.store, 99_999)
        stopped.status = SeriesStatus.STOPPED
        put_series(txn, world.store, stopped)
    lane = world.handler.fast_answer
    compared = answered = 0
    for round_ in range(1500):
        series, quantity = rng.choice([(45, 8), (7, 8), (99_999, 4), (12, 4)])
        serial = rng.randrange(quantity)
        if round_ % 3 == 0:
            _scramble(world, rng, series, serial)
        elif round_ % 3 == 1:
            _heal(world, rng, series, serial)
        pin = world.pins[series][serial].encode()
        user = rng.choice([f"{series}-{serial:09d}".encode()] * 6 + _spellings(rng, series, serial))
        raw = request(user=user, pin=rng.choice([pin] * 8 + [pin[:-1], b"", pin + b"\xff", None]),
                      ma=rng.random() > 0.1, called=rng.choice([b""] * 8 + [b"442079460000"]))
        client = world.client(rng.choice(CLIENTS))
        world.clock.now = T0 + rng.choice([0, 0, 0, 1])
        fast = lane.decide(raw, client)
        expected = reference(world, raw, client)
        if fast is not None:
            assert fast == expected, (user, client.name)
            answered += 1
        compared += 1
    assert compared == 1500 and answered >= 100, answered


def test_lane_rereads_series_after_a_control_plane_change(world):
    """The lane caches series by config_version, as the handler's Lookups do."""
    world.add_series(45, quantity=1, initial_status=CardStatus.ACTIVATED)
    lane, raw = world.handler.fast_answer, request(user=b"45-000000000", pin=world.pins[45][0].encode())
    assert lane.decide(raw, world.client()) is not None
    from radcore.store import bump_version

    with world.store.begin(write=True) as txn:
        series = get_series(txn, world.store, 45)
        series.status = SeriesStatus.STOPPED
        put_series(txn, world.store, series)
        bump_version(txn, world.store, "config_version")
    raw = request(user=b"45-000000000", pin=world.pins[45][0].encode())
    assert lane.decide(raw, world.client()) is None
    reply = packet.decode_response(reference(world, raw, world.client()), raw[4:20], SECRET)
    assert reply.code == d.Code.ACCESS_REJECT


@settings(max_examples=300, deadline=None)
@given(pepper=st.binary(min_size=0, max_size=100), pin=st.binary(min_size=0, max_size=200))
def test_hmac_sha256_matches_hashlib(tmp_path_factory, pepper, pin):
    from radcore._cardauth import CardAuthLane

    class Ring:
        pin_pepper = pepper

    class FakeStore:
        cards = None

    lane = CardAuthLane(FakeStore(), Ring(), None, None)
    assert lane.pin_digest(pin) == hmac.new(pepper, pin, hashlib.sha256).digest()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789- ", max_size=20), st.text(max_size=20)))
def test_card_number_parser_agrees_with_the_reference(text):
    from radcore._cardauth import plain_card_number

    fast = plain_card_number(text.encode())
    try:
        expected = parse_card_number(text)
    except Invalid:
        expected = None
    if fast is not None:  # the lane may refuse odd spellings, never read them differently
        assert fast == expected
    elif expected is not None:  # declined: only spellings other than the two plain ones
        assert not re.fullmatch(r"[0-9]{1,5}-?[0-9]{9}", text)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_amount_text_matches_format_amount(micro):
    from radcore._cardauth import amount_text

    assert amount_text(micro) == format_amount(micro)


def test_a_served_worker_answers_card_auth_in_the_lane_and_retransmissions_from_the_cache(tmp_path):
    """A real server: the first authentication activates the card (Python path), later ones are
    answered in C; a retransmission gets the identical bytes from the duplicate cache, a reused
    Identifier with a new authenticator a fresh answer, and /metrics counts all of it."""
    from helpers_server import UdpClient, metric_key
    from test_e2e_prepaid import SECRET as E2E_SECRET
    from test_e2e_prepaid import provision, start_server

    pins = provision(tmp_path, quantity=2)
    secret = E2E_SECRET.encode()
    with start_server(tmp_path, workers=1) as server, UdpClient() as nas:

        def auth(identifier: int) -> tuple[bytes, bytes]:
            authenticator = os.urandom(16)
            raw = packet.encode_access_request(
                identifier, authenticator, [(d.USER_NAME, b"45-000000001"), (d.NAS_IP_ADDRESS, b"\x7f\0\0\1")],
                secret, password=pins[1].encode())
            return raw, authenticator

        def accepts() -> float:
            return server.metrics().get(metric_key("radcore_replies_total", type="access_accept"), 0)

        raw, authenticator = auth(1)
        assert packet.decode_response(nas.exchange(server.auth_port, raw), authenticator, secret).code == \
            d.Code.ACCESS_ACCEPT  # activation: the Python path
        raw, authenticator = auth(2)
        first = nas.exchange(server.auth_port, raw)
        again = nas.exchange(server.auth_port, raw)
        assert first == again and packet.decode_response(first, authenticator, secret).code == d.Code.ACCESS_ACCEPT
        fresh, fresh_auth = auth(2)
        third = nas.exchange(server.auth_port, fresh)
        assert third != first and packet.decode_response(third, fresh_auth, secret).code == d.Code.ACCESS_ACCEPT
        server.wait_metric("radcore_replies_total", 3, type="access_accept")
        server.wait_metric("radcore_duplicates_total", 1)
        assert accepts() == 3
        assert server.metrics()["radcore_fast_answers_total"] == 2  # all but the activation
        assert server.metrics()[metric_key("radcore_requests_received_total", type="access_request")] == 4


def test_a_store_failure_under_the_lane_hands_the_batch_to_the_python_path(world):
    """The lane never loses a request: if its store read fails, every datagram of the batch comes
    back for the Python path (which answers as the handler documents) and the error is reported."""
    from helpers_server import loopback_pair
    from radcore._cardauth import CardAuthLane
    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import AUTH

    class BrokenStore:
        cards = None

        def begin(self):
            raise OSError("reader table full")

    world.add_series(45, quantity=1, initial_status=CardStatus.ACTIVATED)
    with loopback_pair() as (server, nas):
        lane = Lane([(server, AUTH)], 8)
        errors = []
        lane.on_lane_error = errors.append
        raws = [request(user=b"45-000000000", pin=world.pins[45][0].encode()) for _ in range(3)]
        for raw in raws:
            nas.sendto(raw, server.getsockname())
        time.sleep(0.05)  # loopback has delivered by now; this is only slack for a loaded machine
        assert lane.receive([0]) == 3
        broken = CardAuthLane(BrokenStore(), world.keyring, world.handler.lookups, world.clock)
        answered, rest = lane.serve(broken, world.config, DuplicateCache(30))
        assert answered == 0 and [r[0] for r in rest] == raws
        assert len(errors) == 1 and "reader table full" in str(errors[0])
        # With a working lane the same datagrams are answered in C and queued for one sendmmsg.
        answered, rest = lane.serve(world.handler.fast_answer, world.config, DuplicateCache(30))
        assert answered == 3 and rest == []
        sent, failed = lane.flush()
        assert sent == 3 and failed == []
        nas.settimeout(3)
        replies = [nas.recv(4096) for _ in range(3)]
        assert sorted(r[1] for r in replies) == sorted(r[1] for r in raws)


def test_spin_reports_the_sockets_that_receive_within_the_window_and_nothing_after_it():
    """The worker polls before sleeping: a datagram that arrives during the window is reported by
    socket index; with none, the call returns empty once the window is over, not before."""
    import socket
    import threading

    from helpers_server import loopback_pair
    from radcore._lane import Lane
    from radcore.dupcache import ACCT, AUTH

    with loopback_pair() as (auth, nas), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as acct:
        acct.bind(("127.0.0.1", 0))
        acct.setblocking(False)
        lane = Lane([(auth, AUTH), (acct, ACCT)], 8)
        started = time.monotonic()
        assert lane.spin(0.02) == []
        assert time.monotonic() - started >= 0.02
        sender = threading.Timer(0.01, nas.sendto, (b"x" * 20, acct.getsockname()))
        sender.start()
        try:
            assert lane.spin(5.0) == [1]
        finally:
            sender.join()
        assert lane.receive([1]) == 1


def test_the_lane_fills_the_shared_duplicate_cache_within_its_bound(world):
    """The lane stores each answer under the key the Python path looks up (the source's text, port,
    Identifier and kind), newest first to survive, and never holds more than `max_entries`, even
    when one batch answers more requests than that."""
    from helpers_server import loopback_pair
    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import AUTH

    world.add_series(45, quantity=1, initial_status=CardStatus.ACTIVATED)
    with loopback_pair() as (server, nas):
        lane = Lane([(server, AUTH)], 16)
        raws = []
        while len(raws) < 6:  # distinct Identifiers: six keys
            raw = request(user=b"45-000000000", pin=world.pins[45][0].encode())
            if raw[1] not in {r[1] for r in raws}:
                raws.append(raw)
        for raw in raws:
            nas.sendto(raw, server.getsockname())
        time.sleep(0.05)  # loopback has delivered by now; this is only slack for a loaded machine
        assert lane.receive([0]) == 6
        cache = DuplicateCache(30, max_entries=4)
        answered, rest = lane.serve(world.handler.fast_answer, world.config, cache)
        assert (answered, rest, len(cache)) == (6, [], 4)
        lane.flush()
        nas.settimeout(3)
        replies = {r[1]: r for r in (nas.recv(4096) for _ in range(6))}
        host, port = "127.0.0.1", nas.getsockname()[1]
        for raw in raws[:2]:
            assert cache.lookup((host, port, raw[1], AUTH), raw[4:20]) is None, "evicted, oldest first"
        for raw in raws[2:]:
            assert cache.lookup((host, port, raw[1], AUTH), raw[4:20]) == replies[raw[1]]


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_sources_are_answered_by_the_lane_and_by_the_python_path(tmp_path):
    """Addresses round-trip through the C loop as the socket module writes them (4-tuples for
    IPv6): a lane answer and a Python-path answer (a wrong PIN) both reach an IPv6 NAS."""
    import socket

    from radcore._dupcache import DuplicateCache
    from radcore._lane import Lane
    from radcore.dupcache import AUTH

    world = make_world(tmp_path, EXTRA_CLIENTS + f"""
[[clients]]
name = "v6-gw"
network = "::1"
secret = "{SECRET.decode()}"
profile = "cisco"
""")
    world.add_series(45, quantity=1, initial_status=CardStatus.ACTIVATED)
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.bind(("::1", 0))
    server.setblocking(False)
    nas = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    nas.bind(("::1", 0))
    nas.settimeout(3)
    try:
        lane = Lane([(server, AUTH)], 8)
        good = request(user=b"45-000000000", pin=world.pins[45][0].encode())
        wrong = request(user=b"45-000000000", pin=b"0000000000")
        while wrong[1] == good[1]:  # replies are told apart by Identifier below
            wrong = request(user=b"45-000000000", pin=b"0000000000")
        nas.sendto(good, server.getsockname()[:2])
        nas.sendto(wrong, server.getsockname()[:2])
        time.sleep(0.05)
        assert lane.receive([0]) == 2
        answered, rest = lane.serve(world.handler.fast_answer, world.config, DuplicateCache(30))
        assert answered == 1 and len(rest) == 1
        raw, addr, sock, kind = rest[0]
        assert raw == wrong and sock is server and kind == AUTH
        assert addr == nas.getsockname()  # (host, port, flowinfo, scope_id), as recvfrom gives it
        wire = reference(world, raw, world.client("v6-gw"))
        lane.queue(sock, wire, addr)
        assert lane.flush() == (2, [])
        replies = {r[1]: r for r in (nas.recv(4096), nas.recv(4096))}
        assert packet.decode_response(replies[good[1]], good[4:20], SECRET).code == d.Code.ACCESS_ACCEPT
        assert packet.decode_response(replies[wrong[1]], wrong[4:20], SECRET).code == d.Code.ACCESS_REJECT
    finally:
        server.close()
        nas.close()
