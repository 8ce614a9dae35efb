"""Decoding, Cython fast path against the reference: `parse_request`, `parse_batch`, `decode` and
`decode_response`.

Seeded random packets, valid and then mutated (bit flips, truncation, padding, a wrong Length, code or
secret), attribute-shaped noise, and replies to the valid ones: for every datagram both implementations
return equal results or raise the same class with the same `reason`.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcore import dictionary as d
from radcore import errors, packet

from helpers_codec import CORPUS, SEED, load_fastpath, mutate, normalize, outcome, random_request


@pytest.fixture(scope="module")
def cy():
    """The compiled module; skipped without it, a failure under RADCORE_REQUIRE_EXTENSIONS."""
    return load_fastpath()


def test_corpus_reaches_every_outcome():
    """The generator is only useful if it gets past the checks: every reason and plenty of successes."""
    results = [outcome(packet.parse_request, *item) for item in CORPUS]
    kinds = {r[2] if r[0] == "error" else r[0] for r in results}
    assert kinds >= {"ok", "short", "bad_length", "truncated", "bad_attribute", "bad_code",
                     "bad_authenticator", "bad_message_authenticator", "missing_message_authenticator",
                     "bad_password"}
    assert sum(r[0] == "ok" for r in results) > len(CORPUS) // 5


def test_parse_request_equivalent(cy):
    for index, (data, secret, require) in enumerate(CORPUS):
        want = outcome(packet.parse_request, data, secret, require)
        got = outcome(cy.parse_request, data, secret, require)
        assert got == want, f"item {index}: {data.hex()}"


def test_parse_batch_equivalent(cy):
    assert normalize(cy.parse_batch(CORPUS)) == normalize(packet.parse_batch(CORPUS))


def test_decode_equivalent(cy):
    for index, (data, _, _) in enumerate(CORPUS):
        assert outcome(cy.decode, data) == outcome(packet.decode, data), f"item {index}: {data.hex()}"


tlv = st.tuples(st.integers(0, 255), st.integers(0, 40)).flatmap(
    lambda t: st.binary(min_size=min(t[1], 38), max_size=38).map(lambda v: bytes([t[0], t[1]]) + v[:max(0, t[1] - 2)]))


@settings(max_examples=400, deadline=None)
@given(code=st.sampled_from([1, 4, 12, 2]), chunks=st.lists(tlv, max_size=8), tail=st.binary(max_size=3),
       delta=st.integers(-4, 4), secret=st.binary(max_size=20), require=st.booleans())
def test_random_bytes_equivalent(cy, code, chunks, tail, delta, secret, require):
    """Attribute-shaped noise with a nearly right Length: the walks must fail (or not) alike."""
    body = b"".join(chunks) + tail
    length = max(0, min(65535, 20 + len(body) + delta))
    data = bytes([code, 1]) + length.to_bytes(2, "big") + bytes(16) + body
    assert outcome(cy.parse_request, data, secret, require) == outcome(packet.parse_request, data, secret, require)
    assert outcome(cy.decode, data) == outcome(packet.decode, data)
    assert outcome(cy.decode_response, data, bytes(16), secret) == \
        outcome(packet.decode_response, data, bytes(16), secret)


def test_parse_accepts_bytes_like(cy):
    for data, secret, require in CORPUS[:300]:
        want = outcome(packet.parse_request, data, secret, require)
        assert outcome(cy.parse_request, bytearray(data), bytearray(secret), require) == want
        assert outcome(cy.parse_request, memoryview(data), secret, require) == want


def test_decode_response_equivalent(cy):
    rng = random.Random(SEED + 1)
    checked = ok = 0
    for data, secret, require in CORPUS[::3]:
        try:
            req = packet.parse_request(data, secret, require)
        except errors.PacketError:
            continue
        try:
            attrs = [(k, v) for k, v in packet.decode(random_request(rng, secret)).attributes
                     if k != d.MESSAGE_AUTHENTICATOR]
        except errors.PacketError:
            attrs = []
        for code in (2, 3, 5, 11):
            try:
                reply = packet.encode_response(req, code, attrs, secret)
            except ValueError:
                continue
            for wire, auth, key in [(reply, req.authenticator, secret),
                                    (mutate(rng, reply), req.authenticator, secret),
                                    (reply, rng.randbytes(16), secret),
                                    (reply, req.authenticator, secret + b"!"),
                                    (reply, req.authenticator[:15], secret)]:
                want = outcome(packet.decode_response, wire, auth, key)
                assert outcome(cy.decode_response, wire, auth, key) == want, wire.hex()
                checked += 1
                ok += want[0] == "ok"
    assert checked > 500 and ok > 100
