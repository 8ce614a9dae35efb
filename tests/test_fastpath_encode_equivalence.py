"""Encoding, Cython fast path against the reference: `encode_attributes`, `encode`, the request
encoders, `encode_response` and `encode_responses`.

Random attribute lists, codes, identifiers, authenticators and secrets, including arguments the
encoders must refuse: both implementations return the same bytes or raise the same exception class.
"""

from __future__ import annotations

import enum
import random

import pytest

from radcore import dictionary as d
from radcore import errors, packet

from helpers_codec import CISCO, CORPUS, QUINTUM, SEED, load_fastpath, outcome


@pytest.fixture(scope="module")
def cy():
    """The compiled module; skipped without it, a failure under RADCORE_REQUIRE_EXTENSIONS."""
    return load_fastpath()


# ---------------------------------------------------------------------------------------------
# Encoders, including what they must refuse


class Big(enum.IntEnum):
    ACCEPT = 2


def random_key(rng: random.Random):
    return rng.choice([
        rng.randrange(1, 256), rng.randrange(1, 256), d.vsa_key(CISCO, rng.randrange(256)),
        d.vsa_key(QUINTUM, rng.randrange(256)), 0, -1, 26, 1 << 40, (1 << 32) << 8, True, 1.0, "1",
        d.vsa_key(0xFFFFFFFF, 1),
    ])


def random_value(rng: random.Random):
    return rng.choice([
        rng.randbytes(rng.randrange(0, 40)), rng.randbytes(rng.randrange(0, 40)), rng.randbytes(247),
        rng.randbytes(248), rng.randbytes(253), rng.randbytes(254), bytearray(b"ba"),
        memoryview(b"mv"), "str", None,
    ])


def random_attrs(rng: random.Random, bad: float) -> list:
    out = []
    for _ in range(rng.randrange(0, 8)):
        if rng.random() < bad:
            out.append((random_key(rng), random_value(rng)))
        else:
            out.append((rng.randrange(1, 256), rng.randbytes(rng.randrange(0, 30))))
    return out


def test_encoders_equivalent(cy):
    rng = random.Random(SEED + 2)
    for _ in range(3000):
        attrs = random_attrs(rng, bad=rng.choice([0.0, 0.1, 0.5]))
        code = rng.choice([1, 2, 3, 4, 5, 11, 12, 0, 255, 256, -1, Big.ACCEPT, 2.0, None])
        ident = rng.choice([0, 7, 255, 256, -1])
        auth = rng.choice([rng.randbytes(16), rng.randbytes(16), b"short", rng.randbytes(20), b""])
        secret = rng.choice([rng.randbytes(10), rng.randbytes(70), b""])
        password = rng.choice([None, rng.randbytes(rng.randrange(0, 20)), rng.randbytes(129)])
        ma = rng.choice([True, False, 0, "yes"])
        for name, args, kwargs in [
            ("encode_attributes", (attrs,), {}),
            ("encode_attributes", (tuple(attrs),), {}),
            ("encode", (code, ident, auth, attrs), {}),
            ("encode_access_request", (ident, auth, attrs, secret),
             {"password": password, "message_authenticator": ma, "code": code}),
            ("encode_accounting_request", (ident, attrs, secret), {}),
        ]:
            want = outcome(getattr(packet, name), *args, **kwargs)
            assert outcome(getattr(cy, name), *args, **kwargs) == want, (name, args, kwargs)
        # a one-shot iterable is read once, in order
        assert outcome(cy.encode_attributes, iter(attrs)) == outcome(packet.encode_attributes, iter(attrs))


def test_encode_response_equivalent(cy):
    rng = random.Random(SEED + 3)
    requests = []
    for data, secret, require in CORPUS:
        try:
            requests.append((packet.parse_request(data, secret, require), cy.parse_request(data, secret, require)))
        except errors.PacketError:
            pass
    assert len(requests) > 300
    for py_req, cy_req in requests:
        attrs = random_attrs(rng, bad=rng.choice([0.0, 0.0, 0.2]))
        code = rng.choice([2, 3, 5, 11, 2, Big.ACCEPT, 256, 2.0])
        secret = rng.randbytes(rng.choice([5, 64, 80]))
        want = outcome(packet.encode_response, py_req, code, attrs, secret)
        assert want == outcome(cy.encode_response, cy_req, code, attrs, secret)
        assert want == outcome(cy.encode_response, py_req, code, attrs, secret)
    items = [(cy_req, 2, [], b"k") for _, cy_req in requests[:50]]
    assert cy.encode_responses(items) == packet.encode_responses([(p, 2, [], b"k") for p, _ in requests[:50]])


def test_odd_proxy_states_equivalent(cy):
    base = packet.parse_request(packet.encode_access_request(1, bytes(16), [], b"k"), b"k")
    for states in [(b"x" * 253,), (b"x" * 254,), (bytearray(b"ba"),), ("str",), [b"a", b"b"]]:
        req = base._replace(proxy_states=states)
        assert outcome(cy.encode_response, req, 2, [], b"k") == outcome(packet.encode_response, req, 2, [], b"k")
