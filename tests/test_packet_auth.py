"""The codec's cryptography, run against both implementations: MD5 and HMAC-MD5 (the fast path carries
its own; the reference uses hashlib), User-Password hiding, CHAP, and the Request Authenticator and
Message-Authenticator checks with the drop reason each failure gives.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcore import dictionary as d
from radcore import errors, packet

from helpers_codec import AUTH, SECRET, codec_for


@pytest.fixture(scope="module", params=["py", "cy"], ids=["py", "cy"])
def codec(request) -> ModuleType:
    """One codec implementation; module-scoped so hypothesis tests can use it."""
    return codec_for(request.param)


# ---------------------------------------------------------------------------------------------
# MD5 and HMAC-MD5 (the fast path carries its own; the reference uses hashlib)

MD5_SUITE = {  # RFC 1321 §A.5
    b"": "d41d8cd98f00b204e9800998ecf8427e",
    b"a": "0cc175b9c0f1b6a831c399e269772661",
    b"abc": "900150983cd24fb0d6963f7d28e17f72",
    b"message digest": "f96b697d7cb7938d525a2f31aaf161d0",
    b"abcdefghijklmnopqrstuvwxyz": "c3fcd3d76192e4007dfb496cca67e13b",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789":
        "d174ab98d277d9f5a5611c2c9f419d9f",
    b"1234567890" * 8: "57edf4a22be3c955ac49da2e2107b67a",
}


def md5_via(codec, message: bytes) -> bytes:
    # response_authenticator(data, auth, secret) = MD5(data[:4] + auth + data[20:] + secret)
    return codec.response_authenticator(b"", message, b"")


@pytest.mark.parametrize("message", list(MD5_SUITE), ids=[str(len(m)) for m in MD5_SUITE])
def test_md5_rfc1321_suite(codec, message):
    assert md5_via(codec, message).hex() == MD5_SUITE[message]


def test_md5_matches_hashlib(codec):
    rng = random.Random(1321)
    for n in [*range(0, 200), 447, 448, 449, 511, 512, 513, 4096, 10000]:
        message = rng.randbytes(n)
        assert md5_via(codec, message) == hashlib.md5(message).digest(), n
        # fed in pieces as well: header, authenticator, body, secret
        data = rng.randbytes(20 + n)
        secret = rng.randbytes(n % 90)
        assert codec.request_authenticator(data, secret) == \
            hashlib.md5(data[:4] + bytes(16) + data[20:] + secret).digest()


def test_hmac_md5_matches_hmac_module(codec):
    """Keys of every length around the 64-octet block (longer keys are hashed first, RFC 2104 §2)."""
    rng = random.Random(2104)
    for key_len in [*range(0, 70), 100, 128, 300]:
        key = rng.randbytes(key_len)
        data = rng.randbytes(rng.randrange(38, 300))
        auth = rng.randbytes(16)
        offset = rng.randrange(20, len(data) - 15)
        expected = bytearray(data)
        expected[4:20] = auth
        expected[offset:offset + 16] = bytes(16)
        want = hmac.new(key, bytes(expected), hashlib.md5).digest()
        assert codec.message_authenticator(data, key, auth, offset) == want, key_len
        # the same secret again (the fast path caches the keyed state) and then another one
        assert codec.message_authenticator(data, key, auth, offset) == want
        assert codec.message_authenticator(data, key + b"x", auth, offset) != want


def test_message_authenticator_odd_arguments(codec):
    """Arguments off the C path still give the reference's answer."""
    data = bytes(range(60))
    for auth, offset in [(bytes(15), 22), (bytes(17), 22), (bytes(16), 10), (bytes(16), 50)]:
        assert codec.message_authenticator(data, b"s", auth, offset) == \
            packet.message_authenticator(data, b"s", auth, offset)
    assert codec.message_authenticator(bytearray(data), bytearray(b"s"), bytes(16), 22) == \
        packet.message_authenticator(data, b"s", bytes(16), 22)


# ---------------------------------------------------------------------------------------------
# PAP, CHAP, authenticators



@pytest.mark.parametrize("password", [b"", b"1", b"x" * 15, b"y" * 16, b"z" * 17, b"p" * 128,
                                      "пароль".encode()])
def test_password_hiding_round_trip(codec, password):
    hidden = codec.hide_password(password, SECRET, AUTH)
    assert len(hidden) == max(16, (len(password) + 15) // 16 * 16)
    assert hidden == packet.hide_password(password, SECRET, AUTH)
    assert codec.unhide_password(hidden, SECRET, AUTH) == password


def test_password_too_long(codec):
    with pytest.raises(ValueError):
        codec.hide_password(b"x" * 129, SECRET, AUTH)


@pytest.mark.parametrize("size", [0, 1, 15, 17, 144])
def test_unhide_bad_size(codec, size):
    with pytest.raises(errors.PacketError) as info:
        codec.unhide_password(bytes(size), SECRET, AUTH)
    assert info.value.reason == "bad_password"


def test_chap(codec):
    challenge = bytes(range(16))
    response = hashlib.md5(b"\x07" + b"pin1234" + challenge).digest()
    chap = b"\x07" + response
    assert codec.chap_matches(chap, challenge, b"pin1234") is True
    assert codec.chap_matches(chap, challenge, b"pin1235") is False
    assert codec.chap_matches(chap[:16], challenge, b"pin1234") is False
    # parse_request: CHAP-Challenge when present, else the Request Authenticator (RFC 2865 §2.2)
    wire = codec.encode_access_request(1, challenge, [(d.USER_NAME, b"45-1"), (d.CHAP_PASSWORD, chap)],
                                       SECRET)
    req = codec.parse_request(wire, SECRET)
    assert (req.chap_password, req.chap_challenge, req.password) == (chap, challenge, None)
    assert codec.chap_matches(req.chap_password, req.chap_challenge, b"pin1234")
    other = bytes(range(16, 32))
    wire = codec.encode_access_request(1, challenge, [(d.CHAP_PASSWORD, chap), (d.CHAP_CHALLENGE, other)],
                                       SECRET)
    assert codec.parse_request(wire, SECRET).chap_challenge == other


def test_accounting_request_authenticator(codec):
    attrs = [(d.USER_NAME, b"45-001122333"), (d.ACCT_STATUS_TYPE, (2).to_bytes(4, "big")),
             (d.ACCT_SESSION_TIME, (61).to_bytes(4, "big"))]
    wire = codec.encode_accounting_request(17, attrs, SECRET)
    assert wire[4:20] == hashlib.md5(wire[:4] + bytes(16) + wire[20:] + SECRET).digest()
    assert codec.request_authenticator(wire, SECRET) == wire[4:20]
    req = codec.parse_request(wire, SECRET)
    assert (req.code, req.status_type, req.session_time, req.has_message_authenticator) == (4, 2, 61, False)
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(errors.AuthenticatorError) as info:
        codec.parse_request(tampered, SECRET)
    assert info.value.reason == "bad_authenticator"


def test_accounting_request_with_message_authenticator(codec):
    """The MA of an Accounting-Request is computed with 16 zero octets as authenticator, then the
    Request Authenticator covers the packet including the MA (RFC 3579 §3.2, RFC 2866 §3)."""
    body = packet.encode_attributes([(d.MESSAGE_AUTHENTICATOR, bytes(16)), (d.USER_NAME, b"u")])
    wire = bytearray(bytes([4, 5, 0, 20 + len(body)]) + bytes(16) + body)
    wire[22:38] = hmac.new(SECRET, bytes(wire), hashlib.md5).digest()
    wire[4:20] = hashlib.md5(bytes(wire) + SECRET).digest()
    req = codec.parse_request(bytes(wire), SECRET)
    assert req.has_message_authenticator and req.user_name == "u"
    wire[30] ^= 1  # break the MA, then sign the packet again so only the MA is wrong
    wire[4:20] = hashlib.md5(bytes(wire[:4]) + bytes(16) + bytes(wire[20:]) + SECRET).digest()
    with pytest.raises(errors.MessageAuthenticatorError) as info:
        codec.parse_request(bytes(wire), SECRET)
    assert info.value.reason == "bad_message_authenticator"


def test_message_authenticator_verify_and_reasons(codec):
    wire = codec.encode_access_request(3, AUTH, [(d.USER_NAME, b"45-1")], SECRET, password=b"1234")
    assert wire[20] == d.MESSAGE_AUTHENTICATOR and wire[21] == 18
    req = codec.parse_request(wire, SECRET)
    assert req.has_message_authenticator and req.password == b"1234"
    flipped = wire[:22] + bytes([wire[22] ^ 0x80]) + wire[23:]
    for data, secret in [(flipped, SECRET), (wire, SECRET + b"!")]:
        with pytest.raises(errors.MessageAuthenticatorError) as info:
            codec.parse_request(data, secret)
        assert info.value.reason == "bad_message_authenticator"
    unsigned = codec.encode_access_request(3, AUTH, [(d.USER_NAME, b"45-1")], SECRET,
                                           message_authenticator=False)
    with pytest.raises(errors.MessageAuthenticatorError) as info:
        codec.parse_request(unsigned, SECRET)
    assert info.value.reason == "missing_message_authenticator"
    assert codec.parse_request(unsigned, SECRET, False).has_message_authenticator is False




@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=st.binary(max_size=128), secret=st.binary(max_size=100),
       auth=st.binary(min_size=16, max_size=16))
def test_hide_unhide(codec, password, secret, auth):
    hidden = codec.hide_password(password, secret, auth)
    assert codec.unhide_password(hidden, secret, auth) == password.rstrip(b"\x00")


